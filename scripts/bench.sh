#!/usr/bin/env bash
# What `make bench` does: builds the release gateway, wake service and loadgen (bench/),
# starts a wake service (its default endpoint `db`: Postgres 15 with fsync on, as in
# production, and PgBouncer) and a gateway on free loopback ports, then measures the
# gateway side by side with direct Postgres and PgBouncer in this one run:
#   1. loadgen run      HTTP /sql (with a password and with a JWT), WebSocket tunnel, plain TCP, connection set-up,
#                       route-table calls; then, each on a fresh gateway, thousands of idle
#                       WebSocket sessions and 10 000 HTTP clients (with memory per connection);
#   2. node cold-start  the real driver's first query on a suspended endpoint vs a bare
#                       Postgres started on the same data (sdk-tests/bench/cold-start.bench.js);
#   3. (full mode) node http.bench.js and session.bench.js: the real npm driver vs
#                       node-postgres, printed only;
#   4. loadgen run      the flood test (7a-7j), each attack on a fresh gateway: a hostile
#                       client on 127.0.0.2 next to a well-behaved one on 127.0.0.1, whose
#                       SELECT 1 latency and errors are compared with its own quiet run;
#   5. pgbench          autoscaling (9) on an endpoint of its own: the same select-only load
#                       at a fixed 0.25 CU and 1 CU (the CPU quota's throughput ratio), then
#                       rounds from 0.25 CU with max 2 CU (time from the load's start until
#                       the size grows);
#   6. node branches    a branch of a small and of a large database, created through the
#                       wake service and queried with the real driver, next to CREATE
#                       DATABASE … TEMPLATE by hand on a bare Postgres with the same data and
#                       next to a fresh Postgres (sdk-tests/bench/branches.bench.js);
#   7. loadgen report   merges the cold start, autoscaling and branches in, prints the table,
#                       writes bench/results/latest.json and BENCHMARKS.md.
# With two or more cores the gateway (and the reference PgBouncer) run on core 0 and the
# clients on core 1 (taskset).
# Everything is bounded by fixed durations and counts, and each step by a time limit.
#
# Usage: scripts/bench.sh [--quick] [--only flood|7a,7b,...|8|9|10]
#        (make bench ARGS=--quick, ARGS="--quick --only flood", or BENCH_QUICK=1 make bench)
# --quick runs every scenario with smaller counts and durations (about 2.5 minutes after the
# build, half of it the flood test); the full run takes about 8 minutes after the build.
# --only flood runs only the flood test (or only the attacks listed): their rows replace
# theirs in bench/results/latest.json (a report of them alone when there is none); --only 8
# runs only scenario 8 (JWT next to password), merged the same way; --only 9 only autoscaling;
# --only 10 only branches.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="bench"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/stack.sh
. "$SCRIPT_DIR/stack.sh"

QUICK=0
case "${BENCH_QUICK:-}" in "" | 0 | false | no) ;; *) QUICK=1 ;; esac
# The flood test's attacks, in the order they run: the iteration bomb last, since the gateway
# it hits keeps hashing long after it.
FLOOD_ATTACKS=(7b 7c 7d 7e 7f 7g 7h 7i 7j 7a)
ONLY=""
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --only)
      (($# >= 2)) || die "--only needs a value (flood, or attacks such as 7b,7d)"
      ONLY="$2"
      shift
      ;;
    --only=*) ONLY="${1#--only=}" ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $1 (try --quick, --only flood)" ;;
  esac
  shift
done
if [[ "$ONLY" == 8 || "$ONLY" == 9 || "$ONLY" == 10 ]]; then
  : # scenario 8 alone (JWT next to password), on one gateway; or 9 (autoscaling), or 10 (branches)
elif [[ -n "$ONLY" && "$ONLY" != flood ]]; then
  IFS=',' read -r -a FLOOD_ATTACKS <<<"$ONLY"
  for attack in "${FLOOD_ATTACKS[@]}"; do
    [[ "$attack" =~ ^7[a-j]$ ]] || die "--only takes flood, attacks 7a to 7j, 8, 9 or 10, not '$attack'"
  done
fi

REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
GATEWAY_BIN="$TARGET_DIR/release/gateway"
GATEWAY_LOG="$TARGET_DIR/bench-gateway.log"
WAKE_BIN="$TARGET_DIR/release/wake-service"
WAKE_LOG="$TARGET_DIR/bench-wake.log"
LOADGEN_BIN="$TARGET_DIR/release/loadgen"
COLD_JSON="$TARGET_DIR/bench-cold-start.json"
AUTOSCALE_JSON="$TARGET_DIR/bench-autoscale.json"
BRANCHES_JSON="$TARGET_DIR/bench-branches.json"
# Compute ports of the bench: away from `make up` (20000-20999) and `make test` (21000-22499).
BENCH_COMPUTE_PORTS="${BENCH_COMPUTE_PORTS:-23000-23499}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
READY_TIMEOUT_SECS=30
export RUST_LOG="${RUST_LOG:-warn}"
# Room for scenario 4: 10 000 HTTP clients, or up to 9 000 WebSocket sessions (two
# descriptors each in the gateway). The gateway and the wake service inherit the file limit.
export GATEWAY_MAX_CLIENT_CONNECTIONS="${GATEWAY_MAX_CLIENT_CONNECTIONS:-19000}"
# Scenarios 1-6 open all those connections from one address to one endpoint and run it flat
# out: the per-address and per-endpoint limits are lifted for them. The flood test runs its
# gateways with the defaults (its attacker has an address and an endpoint of its own).
export GATEWAY_MAX_CONNECTIONS_PER_IP="${GATEWAY_MAX_CONNECTIONS_PER_IP:-19000}"
export GATEWAY_MAX_ENDPOINT_CONNECTIONS="${GATEWAY_MAX_ENDPOINT_CONNECTIONS:-19000}"
export GATEWAY_MAX_ENDPOINT_RPS="${GATEWAY_MAX_ENDPOINT_RPS:-0}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || warn "could not raise the open-files limit ($(ulimit -n))"
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
cargo build --release -p gateway -p wake-service -p loadgen
started=$SECONDS
WAKE_DATA="$(mktemp -d "${TMPDIR:-/tmp}/wake-bench-data.XXXXXX")"
chmod 711 "$WAKE_DATA"
start_wake_service "$WAKE_DATA" "$BENCH_COMPUTE_PORTS" --default-suspend-timeout-seconds -1
DB_DIRECT="$(curl -fsS --max-time 10 -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" \
  "$WAKE_URL/v1/endpoints/db" | sed -n 's/.*"direct":"\([^"]*\)".*/\1/p')"
[[ -n "$DB_DIRECT" ]] || die "could not read the address of endpoint db"
start_gateway

# The gateway on core 0 (all its threads), the clients (loadgen, node) on core 1.
CLIENT=()
PIN=0
cores="$(nproc 2>/dev/null || echo 1)"
if ((cores >= 2)) && command -v taskset >/dev/null 2>&1; then
  PIN=1
  CLIENT=(taskset -c 1)
  PINNING="gateway and the reference PgBouncer on core 0, loadgen and node on core 1 (taskset); the wake service and Postgres unpinned; $cores cores"
else
  PINNING="not pinned ($cores cores$(command -v taskset >/dev/null 2>&1 || echo ', no taskset')): the gateway and the clients share cores"
fi
pin_gateway() {
  ((PIN)) || return 0
  taskset -a -p -c 0 "$GATEWAY_PID" >/dev/null || die "could not pin the gateway to core 0"
}
# The reference pooler gets the gateway's placement, so both proxies compete with Postgres
# for the same core and their latency taxes compare like for like.
pin_pgbouncer() {
  ((PIN)) || return 0
  local pidfile="$WAKE_DATA/computes/db/pgbouncer/pgbouncer.pid" pid
  pid="$(cat "$pidfile" 2>/dev/null)" || die "no PgBouncer pid file at $pidfile"
  taskset -a -p -c 0 "$pid" >/dev/null || die "could not pin PgBouncer ($pid) to core 0"
}
# fresh_gateway — a new gateway process (new ports and pid). The memory scenarios each get
# one: a gateway keeps memory it has freed and hands it to the next connections, which
# would hide what they cost.
fresh_gateway() {
  stop_gateway
  start_gateway
  pin_gateway
}
pin_gateway
pin_pgbouncer
log "placement: $PINNING"

if [[ -z "$ONLY" ]] && [[ ! -d sdk-tests/node_modules || sdk-tests/package-lock.json -nt sdk-tests/node_modules/.package-lock.json ]]; then
  (cd sdk-tests && npm ci --no-audit --no-fund >/dev/null)
fi

mode_args=()
((QUICK)) && mode_args=(--quick)
# loadgen_run ARGS... — the loadgen against the current gateway. Its table is printed once,
# by `loadgen report` at the end.
loadgen_run() {
  log "==> loadgen run ${mode_args[*]} $*"
  WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" timeout --foreground -k 10 900 "${CLIENT[@]}" "$LOADGEN_BIN" run "${mode_args[@]}" \
    --gateway "127.0.0.1:$GW_PORT" --gateway-admin "127.0.0.1:$GW_ADMIN_PORT" \
    --gateway-pid "$GATEWAY_PID" --wake-url "$WAKE_URL" --pinning "$PINNING" "$@" >/dev/null
}
# The flood test's gateways have, besides the control plane, a static route for the
# attacker's own endpoint to endpoint db's Postgres: its authenticated attacks go there, not
# to the victim's endpoint, and the iteration bomb (7a) needs a static route, where the
# gateway logs in to Postgres with the client's cleartext password and so runs PBKDF2 with
# whatever iteration count Postgres asks for. start_gateway sets the route variables itself,
# so the route goes on the command line, through a wrapper that execs the gateway (same pid).
ATTACKER_ENDPOINT="hostile"
ATTACKER_GATEWAY="$TARGET_DIR/bench-gateway-attacker-route"
write_attacker_gateway() {
  printf '#!/bin/sh\n# Written by scripts/bench.sh: the gateway with a static route to endpoint db'"'"'s Postgres.\nexec %q --route %q "$@"\n' \
    "$GATEWAY_BIN" "$ATTACKER_ENDPOINT=$DB_DIRECT" >"$ATTACKER_GATEWAY"
  chmod 755 "$ATTACKER_GATEWAY"
}
# flood_test — every selected attack on its own fresh gateway; the first run starts the
# report unless MERGE_FLOOD is set (it is when scenarios 1-6 ran first, and for --only when
# there is a report to merge into).
flood_test() {
  local attack
  local -a merge=() cap=()
  ((MERGE_FLOOD)) && merge=(--merge)
  write_attacker_gateway
  for attack in "${FLOOD_ATTACKS[@]}"; do
    cap=()
    # The gateway's defaults: one address may hold a tenth of the connection cap (1 000 of
    # 10 000), an endpoint 1 000 requests and sessions at once; but 50 000 new ones a second
    # instead of 5 000, since the victim's own closed loop (about 6 000 a second on `db`) would
    # otherwise meet its endpoint's cap and count those 429s as the attack's harm.
    if [[ "$attack" == 7j ]]; then
      # More WebSocket sessions than a small cap, with the per-address share of the defaults.
      GATEWAY_MAX_CLIENT_CONNECTIONS=200 GATEWAY_MAX_CONNECTIONS_PER_IP=20 \
        GATEWAY_MAX_ENDPOINT_CONNECTIONS=1000 GATEWAY_MAX_ENDPOINT_RPS=50000 \
        GATEWAY_BIN="$ATTACKER_GATEWAY" fresh_gateway
      cap=(--gateway-max-client-connections 200)
    else
      GATEWAY_MAX_CONNECTIONS_PER_IP=1000 GATEWAY_MAX_ENDPOINT_CONNECTIONS=1000 \
        GATEWAY_MAX_ENDPOINT_RPS=50000 GATEWAY_BIN="$ATTACKER_GATEWAY" fresh_gateway
    fi
    loadgen_run --only "$attack" "${merge[@]}" "${cap[@]}" --attacker-endpoint "$ATTACKER_ENDPOINT"
    if [[ "$attack" == 7a ]]; then
      # An unfixed gateway's workers are stuck in PBKDF2 long after the attack and cannot
      # drain: SIGKILL at once.
      kill -KILL "$GATEWAY_PID" 2>/dev/null || true
      wait "$GATEWAY_PID" 2>/dev/null || true
      GATEWAY_PID=""
    fi
    merge=(--merge)
  done
}

# api METHOD PATH [BODY] — the wake service's admin API; prints the answer.
api() {
  local args=(-fsS --max-time 30 -X "$1" -H "Authorization: Bearer $WAKE_ADMIN_TOKEN"
    -H 'Content-Type: application/json')
  (($# < 3)) || args+=(--data "$3")
  curl "${args[@]}" "$WAKE_URL$2"
}
# current_cu ID — the endpoint's size now.
current_cu() { api GET "/v1/endpoints/$1" | sed -n 's/.*"current_cu":\([0-9.]*\).*/\1/p'; }
# scale_pgbench SECONDS [ARGS...] — the select-only load on endpoint `scale`: prints its tps;
# fails when pgbench does (a failed transaction fails it).
scale_pgbench() {
  local seconds="$1" out
  shift
  out="$(PGPASSWORD=bench-password-1 "${CLIENT[@]}" "$PG_BIN/pgbench" -h "${SCALE_DIRECT%:*}" \
    -p "${SCALE_DIRECT##*:}" -U bench -n -S -c 8 -j 2 -T "$seconds" "$@" bench 2>&1)" || {
    warn "pgbench failed: $(tail -3 <<<"$out")"
    return 1
  }
  sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1
}
# autoscale_bench — scenario 9 on an endpoint of its own, written to AUTOSCALE_JSON.
autoscale_bench() {
  local seconds=10 rounds=4 tps_one tps_quarter failures=0 upscale=() peaks=() round
  ((QUICK)) && seconds=5 rounds=2
  log "==> autoscaling (9): pgbench -S, 8 clients, ${seconds} s loads, $rounds rounds"
  api POST /v1/endpoints '{"id":"scale","min_cu":1,"max_cu":1,"suspend_timeout_seconds":-1}' >/dev/null
  api POST /v1/endpoints/scale/roles '{"name":"bench","password":"bench-password-1"}' >/dev/null
  api POST /v1/endpoints/scale/databases '{"name":"bench","owner":"bench"}' >/dev/null
  SCALE_DIRECT="$(api GET /v1/endpoints/scale | sed -n 's/.*"direct":"\([^"]*\)".*/\1/p')"
  PGPASSWORD=bench-password-1 "$PG_BIN/pgbench" -h "${SCALE_DIRECT%:*}" -p "${SCALE_DIRECT##*:}" \
    -U bench -i -s 4 -q bench >/dev/null 2>&1 || die "pgbench -i failed"
  tps_one="$(scale_pgbench "$seconds")" || failures=$((failures + 1))
  api POST /v1/endpoints/scale/resize '{"cu":0.25}' >/dev/null
  tps_quarter="$(scale_pgbench "$seconds")" || failures=$((failures + 1))
  for ((round = 1; round <= rounds; round++)); do
    api PATCH /v1/endpoints/scale '{"min_cu":0.25,"max_cu":0.25}' >/dev/null
    sleep 3 # a few quiet samples at 0.25 CU
    api PATCH /v1/endpoints/scale '{"max_cu":2}' >/dev/null
    local began=$EPOCHREALTIME grown="" peak=0.25 cu pid
    scale_pgbench "$seconds" >/dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      cu="$(current_cu scale)" || cu=""
      if [[ -z "$grown" && -n "$cu" && "$cu" != 0.25 ]]; then
        grown="$(awk -v a="$began" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }')"
      fi
      peak="$(awk -v a="$peak" -v b="$cu" 'BEGIN { print (b > a) ? b : a }')"
      sleep 0.05
    done
    wait "$pid" || failures=$((failures + 1))
    [[ -n "$grown" ]] && upscale+=("$grown")
    peaks+=("$peak")
    log "    round $round: grew after ${grown:-never} ms, peak $peak CU"
  done
  local IFS=,
  printf '{"load":"pgbench -S, 8 clients, %s s","tps_quarter":%s,"tps_one":%s,"upscale_ms":[%s],"peak_cu":[%s],"failures":%s}\n' \
    "$seconds" "${tps_quarter:-0}" "${tps_one:-0}" "${upscale[*]}" "${peaks[*]}" "$failures" >"$AUTOSCALE_JSON"
  log "    0.25 CU ${tps_quarter:-?} tps, 1 CU ${tps_one:-?} tps"
}

# branches_bench — scenario 10 (sdk-tests/bench/branches.bench.js), its samples in BRANCHES_JSON.
branches_bench() {
  log "==> sdk-tests/bench/branches.bench.js"
  rm -f -- "$BRANCHES_JSON"
  env GATEWAY_HTTP="http://127.0.0.1:$GW_PORT" WAKE_URL="$WAKE_URL" WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" \
    BENCH_QUICK="$QUICK" BENCH_BRANCHES_JSON="$BRANCHES_JSON" \
    timeout --foreground -k 10 1200 "${CLIENT[@]}" node sdk-tests/bench/branches.bench.js
}

if [[ "$ONLY" == 10 ]]; then
  branches_bench
  "$LOADGEN_BIN" report --branches "$BRANCHES_JSON"
  log "measured in $((SECONDS - started)) s after the build ($( ((QUICK)) && echo quick || echo full) mode, scenario 10 only)"
  exit 0
fi
if [[ "$ONLY" == 9 ]]; then
  rm -f -- "$AUTOSCALE_JSON"
  autoscale_bench
  "$LOADGEN_BIN" report --autoscale "$AUTOSCALE_JSON"
  log "measured in $((SECONDS - started)) s after the build ($( ((QUICK)) && echo quick || echo full) mode, scenario 9 only)"
  exit 0
fi
if [[ "$ONLY" == 8 ]]; then
  loadgen_run --only 8 --merge
  "$LOADGEN_BIN" report
  log "measured in $((SECONDS - started)) s after the build ($( ((QUICK)) && echo quick || echo full) mode, scenario 8 only)"
  exit 0
fi
if [[ -n "$ONLY" ]]; then
  # The attacks' rows replace theirs in the last report, or make a report of their own.
  MERGE_FLOOD=0
  [[ -f "$REPO_ROOT/bench/results/latest.json" ]] && MERGE_FLOOD=1
  flood_test
  "$LOADGEN_BIN" report
  log "measured in $((SECONDS - started)) s after the build ($( ((QUICK)) && echo quick || echo full) mode, flood test only)"
  exit 0
fi

loadgen_run --only 1,2,3,6,8
fresh_gateway
loadgen_run --only 4b --merge
fresh_gateway
loadgen_run --only 4a --merge

node_env=(
  GATEWAY_HTTP="http://127.0.0.1:$GW_PORT"
  DATABASE_URL="postgres://postgres:postgres@db.localtest.me:$GW_PORT/main"
  DIRECT_DATABASE_URL="postgres://postgres:postgres@$DB_DIRECT/main"
  WAKE_URL="$WAKE_URL" WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" WAKE_DATA="$WAKE_DATA" PG_BIN="$PG_BIN"
)
rm -f -- "$COLD_JSON"
log "==> sdk-tests/bench/cold-start.bench.js"
if ! env "${node_env[@]}" BENCH_COLD_ROUNDS="${BENCH_COLD_ROUNDS:-$( ((QUICK)) && echo 5 || echo 30)}" \
  BENCH_COLD_START_JSON="$COLD_JSON" timeout --foreground -k 10 900 "${CLIENT[@]}" node sdk-tests/bench/cold-start.bench.js; then
  warn "the cold-start bench failed; the report goes without it"
  rm -f -- "$COLD_JSON"
fi
if ((!QUICK)); then
  for bench in sdk-tests/bench/http.bench.js sdk-tests/bench/session.bench.js; do
    log "==> $bench (the npm driver; printed only)"
    env "${node_env[@]}" timeout --foreground -k 10 600 "${CLIENT[@]}" node "$bench" || warn "$bench failed"
  done
fi

log "==> the flood test (7), each attack on a fresh gateway"
MERGE_FLOOD=1
flood_test

rm -f -- "$AUTOSCALE_JSON"
autoscale_bench || warn "the autoscaling bench failed; the report goes without it"
branches_bench || { warn "the branches bench failed; the report goes without it"; rm -f -- "$BRANCHES_JSON"; }

report_args=()
[[ -f "$COLD_JSON" ]] && report_args=(--cold-start "$COLD_JSON")
[[ -f "$AUTOSCALE_JSON" ]] && report_args+=(--autoscale "$AUTOSCALE_JSON")
[[ -f "$BRANCHES_JSON" ]] && report_args+=(--branches "$BRANCHES_JSON")
"$LOADGEN_BIN" report "${report_args[@]}"
log "measured in $((SECONDS - started)) s after the build ($( ((QUICK)) && echo quick || echo full) mode)"
