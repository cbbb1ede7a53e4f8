# shellcheck shell=bash
# Sourced by scripts/test.sh, bench.sh and dev-up.sh (after lib.sh): a throwaway
# Postgres and a gateway on free ports, for one run. The caller sets
# GATEWAY_BIN, GATEWAY_LOG and READY_TIMEOUT_SECS, and calls stop_gateway and
# `postgres.sh stop "$PG_DATADIR"` when it ends.

GATEWAY_PID=""
PG_DATADIR=""

# stop_gateway — SIGTERM (the gateway drains), then SIGKILL after 10 s.
stop_gateway() {
  [[ -n "$GATEWAY_PID" ]] || return 0
  if kill -0 "$GATEWAY_PID" 2>/dev/null; then
    log "stopping gateway (pid $GATEWAY_PID)"
    kill -TERM "$GATEWAY_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$GATEWAY_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$GATEWAY_PID" 2>/dev/null; then
      warn "gateway did not exit within 10 s; killing it"
      kill -KILL "$GATEWAY_PID" 2>/dev/null || true
    fi
  fi
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=""
}

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
  : "${GATEWAY_BIN:?the caller sets GATEWAY_BIN}" "${GATEWAY_LOG:?the caller sets GATEWAY_LOG}"
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

