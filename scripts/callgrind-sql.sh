#!/usr/bin/env bash
# Counts the CPU instructions the gateway executes per `/sql` request, with
# valgrind's callgrind (deterministic, unlike wall-clock benchmarks, so it is
# fit for before/after comparisons of a refactoring on a busy machine).
#
#   bash scripts/callgrind-sql.sh
#   GATEWAY_BIN=/path/to/gateway N=1000 bash scripts/callgrind-sql.sh
#
# What it does:
#   1. starts a throwaway Postgres 15 (scripts/postgres.sh temp, PG_FAST=1; as the
#      `postgres` OS user when run as root);
#   2. starts the gateway binary under `valgrind --tool=callgrind` with a static
#      route db=127.0.0.1:<pg port> and waits for /readyz on its admin port;
#   3. sends WARMUP requests (default 200) the way @neondatabase/serverless does:
#      POST /sql, Neon-Connection-String / Neon-Raw-Text-Output / Neon-Array-Mode
#      headers, body {"query":"SELECT $1::int AS x","params":["1"]};
#   4. for each of ROUNDS windows (default 2): `callgrind_control -z` (zero the
#      counters), N sequential requests (default 1000), `callgrind_control -d`
#      (dump); the dump's total Ir (all threads) / N is that window's figure;
#   5. prints `instructions per /sql request: <median of the windows> (N=<N>)` on
#      stdout (the per-window figures go to stderr) and fails if the windows differ
#      by more than MAX_SPREAD_PCT percent (default 2).
# Everything (gateway, Postgres, temp dirs) is stopped and removed on exit, also
# on failure or Ctrl-C; Postgres is also removed by a detached watcher if this
# script is killed outright.
#
# Env:
#   GATEWAY_BIN      gateway binary (default: <repo>/target/release/gateway); build
#                    it with `cargo build --release -p gateway`
#   N                requests per measured window (default 1000)
#   WARMUP           requests before the first window (default 200)
#   ROUNDS           measured windows (default 2)
#   CONN_REUSE       1 (default): all requests of a window on one keep-alive HTTP/1.1
#                    connection, one curl process (like the driver's fetch with
#                    keep-alive); 0: a new curl and TCP connection per request
#   MAX_SPREAD_PCT   allowed (max-min)/min between windows, in percent (default 2)
#   KEEP_WORKDIR     1: keep the callgrind dumps and logs (path printed on stderr)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
LOG_TAG="callgrind-sql"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

N="${N:-1000}"
WARMUP="${WARMUP:-200}"
ROUNDS="${ROUNDS:-2}"
CONN_REUSE="${CONN_REUSE:-1}"
MAX_SPREAD_PCT="${MAX_SPREAD_PCT:-2}"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
GATEWAY_BIN="$(abs_path "$GATEWAY_BIN")"

[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer: '$N'"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer: '$WARMUP'"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer: '$ROUNDS'"
[[ -x "$GATEWAY_BIN" ]] ||
  die "no gateway binary at $GATEWAY_BIN (cargo build --release -p gateway, or set GATEWAY_BIN)"
for tool in valgrind callgrind_control curl; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install valgrind curl)"
done

# --- cleanup -------------------------------------------------------------------

WORK=""
PG_DATA=""
VG_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$VG_PID" ]] && kill -0 "$VG_PID" 2>/dev/null; then
    # SIGINT: the gateway stops at once (SIGTERM would drain first).
    kill -INT "$VG_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$VG_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$VG_PID" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
  fi
  if [[ -n "$PG_DATA" ]]; then
    bash "$SCRIPT_DIR/postgres.sh" stop "$PG_DATA" >/dev/null 2>&1 || true
    [[ -f "$PG_DATA/PG_VERSION" ]] && rm -rf -- "$PG_DATA"
  fi
  if [[ -n "$WORK" ]]; then
    if ((rc != 0)) && [[ -f "$WORK/gateway.log" ]]; then
      warn "last lines of the gateway/valgrind log:"
      tail -n 20 "$WORK/gateway.log" >&2 || true
    fi
    if [[ "${KEEP_WORKDIR:-0}" == 1 ]]; then
      log "kept $WORK"
    else
      rm -rf -- "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/callgrind-sql.XXXXXXXX)"

# --- Postgres --------------------------------------------------------------------

PG_PORT=""
for attempt in 1 2 3; do
  PG_PORT="$(free_port)"
  if PG_DATA="$(PG_FAST=1 bash "$SCRIPT_DIR/postgres.sh" temp "$PG_PORT")"; then
    break
  fi
  PG_DATA=""
  ((attempt < 3)) || die "could not start a temporary Postgres"
  warn "Postgres did not start on port $PG_PORT; retrying on another port"
done
# Removes the cluster even if this script is killed with SIGKILL.
bash "$SCRIPT_DIR/postgres.sh" watch "$$" "$PG_DATA" 2>/dev/null

# --- gateway under callgrind ---------------------------------------------------

# Only callgrind's own vgdb FIFOs live in $WORK/vgdb (TMPDIR is read by valgrind
# and callgrind_control alike), so they go away with $WORK.
mkdir "$WORK/vgdb"
vg_env=(env TMPDIR="$WORK/vgdb")

start_gateway() {
  local listen_port="$1" admin_port="$2"
  # Ignore GATEWAY_* settings from the caller's environment (the gateway reads
  # them); a fixed log level keeps the per-request logging the same on every run.
  local -a unset_env=()
  local var
  for var in "${!GATEWAY_@}"; do unset_env+=(-u "$var"); done
  env "${unset_env[@]}" TMPDIR="$WORK/vgdb" RUST_LOG=info \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    "$GATEWAY_BIN" \
    --listen "127.0.0.1:$listen_port" \
    --admin-listen "127.0.0.1:$admin_port" \
    --route "db=127.0.0.1:$PG_PORT" \
    </dev/null >>"$WORK/gateway.log" 2>&1 &
  VG_PID=$!
}

wait_ready() {
  local admin_port="$1" i
  # Valgrind starts slowly; give it two minutes.
  for i in $(seq 1200); do
    kill -0 "$VG_PID" 2>/dev/null || return 1
    if curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$admin_port/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

GW_PORT=""
for attempt in 1 2 3; do
  GW_PORT="$(free_port)"
  ADMIN_PORT="$(free_port)"
  [[ "$GW_PORT" != "$ADMIN_PORT" ]] || continue
  log "starting $GATEWAY_BIN under callgrind on 127.0.0.1:$GW_PORT (admin $ADMIN_PORT)"
  start_gateway "$GW_PORT" "$ADMIN_PORT"
  if wait_ready "$ADMIN_PORT"; then break; fi
  if kill -0 "$VG_PID" 2>/dev/null; then die "the gateway did not become ready"; fi
  wait "$VG_PID" 2>/dev/null || true
  VG_PID=""
  ((attempt < 3)) || die "the gateway did not start"
  warn "the gateway exited during start-up; retrying on other ports"
done

# --- requests --------------------------------------------------------------------

SQL_URL="http://127.0.0.1:$GW_PORT/sql"
BODY='{"query":"SELECT $1::int AS x","params":["1"]}'
printf '%s' "$BODY" >"$WORK/body.json"
# The headers the driver sends (gateway/tests/support/mod.rs, driver_request).
curl_args=(
  -sS --max-time 60
  -H "Neon-Connection-String: postgres://postgres:postgres@db.localtest.me/main"
  -H "Neon-Raw-Text-Output: true"
  -H "Neon-Array-Mode: true"
  -H "content-type: text/plain;charset=UTF-8"
  --data-binary "@$WORK/body.json"
  -w '\n%{http_code}\n'
)

# send COUNT OUT — COUNT sequential requests, response bodies and status codes to OUT.
send() {
  local count="$1" out="$2" i
  : >"$out"
  if [[ "$CONN_REUSE" == 1 ]]; then
    # One curl, COUNT URLs: curl runs them one after another on one keep-alive
    # connection, with the same method, headers and body for each.
    local cfg="$WORK/urls.cfg"
    : >"$cfg"
    for ((i = 0; i < count; i++)); do printf 'url = "%s"\n' "$SQL_URL" >>"$cfg"; done
    curl "${curl_args[@]}" -K "$cfg" >>"$out"
  else
    for ((i = 0; i < count; i++)); do
      curl "${curl_args[@]}" "$SQL_URL" >>"$out"
    done
  fi
}

# check COUNT OUT — every one of COUNT responses in OUT is 200 with the row [["1"]].
check() {
  local count="$1" out="$2" ok rows
  ok="$(grep -cx '200' "$out" || true)"
  rows="$(tr -d ' ' <"$out" | grep -c '"rows":\[\["1"\]\]' || true)"
  if [[ "$ok" != "$count" || "$rows" != "$count" ]]; then
    warn "expected $count responses with status 200 and rows [[\"1\"]]; got $ok with 200, $rows with the row; first response:"
    head -c 600 "$out" >&2
    echo >&2
    return 1
  fi
}

send 1 "$WORK/first.txt"
check 1 "$WORK/first.txt" || die "the first /sql request failed"
if ((WARMUP > 0)); then
  log "warm-up: $WARMUP requests"
  send "$WARMUP" "$WORK/warmup.txt"
  check "$WARMUP" "$WORK/warmup.txt" || die "warm-up requests failed"
fi

# dump_total FILE — the total Ir of a callgrind dump (all threads: one file, the
# default --separate-threads=no).
dump_total() {
  awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

results=()
for ((round = 1; round <= ROUNDS; round++)); do
  before=("$WORK"/callgrind.out.*)
  "${vg_env[@]}" callgrind_control -z "$VG_PID" >/dev/null ||
    die "callgrind_control -z failed"
  send "$N" "$WORK/round$round.txt"
  "${vg_env[@]}" callgrind_control -d "$VG_PID" >/dev/null ||
    die "callgrind_control -d failed"
  check "$N" "$WORK/round$round.txt" || die "measured requests failed (round $round)"
  # The dump just made is the highest-numbered one (callgrind.out.<n>, n counting up).
  dump="$(ls -1v "$WORK"/callgrind.out.* 2>/dev/null | tail -n 1)"
  [[ -n "$dump" && -s "$dump" ]] || die "no callgrind dump after round $round"
  [[ " ${before[*]} " != *" $dump "* ]] || die "callgrind did not write a new dump in round $round"
  total="$(dump_total "$dump")"
  [[ "$total" =~ ^[0-9]+$ ]] || die "could not read the total from $dump"
  per=$((total / N))
  log "round $round: $total instructions / $N requests = $per per request"
  results+=("$per")
done

# Median of the windows, and their spread.
mapfile -t sorted < <(printf '%s\n' "${results[@]}" | sort -n)
count=${#sorted[@]}
if ((count % 2 == 1)); then
  median=${sorted[count / 2]}
else
  median=$(((sorted[count / 2 - 1] + sorted[count / 2]) / 2))
fi
spread_ok="$(awk -v lo="${sorted[0]}" -v hi="${sorted[count - 1]}" -v max="$MAX_SPREAD_PCT" \
  'BEGIN { s = (hi - lo) * 100 / lo; printf "%.2f\n", s; exit !(s <= max) }')" && ok=1 || ok=0
log "spread between rounds: ${spread_ok}%"

echo "instructions per /sql request: $median (N=$N)"
((ok == 1)) || die "rounds differ by more than ${MAX_SPREAD_PCT}%: ${results[*]}"
