# shellcheck shell=bash
# Sourced by scripts/test.sh, bench.sh, dev-up.sh and stop-computes.sh (after lib.sh): a
# throwaway Postgres or wake service and a gateway on free ports, for one run,
# and a throwaway test CA.
# The caller sets GATEWAY_BIN, GATEWAY_LOG and READY_TIMEOUT_SECS, and calls
# stop_gateway and `postgres.sh stop "$PG_DATADIR"` when it ends. Setting
# STACK_TLS_CERT and STACK_TLS_KEY (e.g. from make_test_tls) before
# start_gateway turns on TLS on the gateway's public port; plain HTTP, WebSocket
# and Postgres keep working on it.

GATEWAY_PID=""
PG_DATADIR=""
WAKE_PID=""
WAKE_URL=""
WAKE_ADMIN_TOKEN="${WAKE_ADMIN_TOKEN:-}"
WAKE_PROXY_TOKEN="${WAKE_PROXY_TOKEN:-}"
STACK_TLS_CERT="${STACK_TLS_CERT:-}"
STACK_TLS_KEY="${STACK_TLS_KEY:-}"

# make_test_tls DIR — a throwaway CA and a server certificate it signed, for
# tests only (valid for 2 days), written to DIR: ca.crt, server.crt and
# server.key. The server certificate names localhost, localtest.me,
# *.localtest.me and 127.0.0.1. The CA key is deleted once it has signed, so
# nothing can be signed with this CA later. The caller owns deleting DIR.
make_test_tls() {
  local dir="$1"
  command -v openssl >/dev/null 2>&1 || { warn "openssl is needed for the test CA"; return 1; }
  # A subshell, so cd and umask stay here. Every command is checked by hand:
  # callers run this under `step`, where set -e does not apply.
  (
    cd "$dir" || exit 1
    umask 077
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout ca.key -out ca.crt -days 2 -subj "/CN=gateway test CA (throwaway)" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" || exit 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout server.key -out server.csr -subj "/CN=localhost" || exit 1
    printf '%s\n' \
      "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature" \
      "extendedKeyUsage = serverAuth" \
      "subjectAltName = DNS:localhost, DNS:localtest.me, DNS:*.localtest.me, IP:127.0.0.1" \
      >server.ext || exit 1
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key \
      -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile server.ext \
      -out server.crt || exit 1
    rm -f -- ca.key server.csr server.ext
    # Readable by whoever runs the clients (node, psql, pgbench); the key only by
    # us, who run the gateway.
    chmod 644 ca.crt server.crt && chmod 600 server.key
  ) 2>"$dir/openssl.log" || {
    warn "could not create the test CA in $dir:"
    cat "$dir/openssl.log" >&2
    return 1
  }
  rm -f -- "$dir/openssl.log"
  openssl verify -CAfile "$dir/ca.crt" "$dir/server.crt" >/dev/null ||
    { warn "the test server certificate does not verify against the test CA"; return 1; }
}

# await_ready NAME PID URL LOG SECS — poll URL until it answers (0). Returns 1
# when PID exits first (the caller may retry on other ports) and 2 when SECS
# pass; both print the tail of LOG.
await_ready() {
  local name="$1" pid="$2" url="$3" logfile="$4" secs="$5" i
  for ((i = 0; i < secs * 2; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      warn "$name exited before it was ready; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    if curl -fsS --max-time 2 "$url" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  warn "$name not ready after $secs s; last lines of $logfile:"
  tail -n 30 "$logfile" >&2 || true
  return 2
}

# exits_within PID SECS — waits until PID is gone, at most SECS; 0 if it went.
exits_within() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

# stop_process NAME PID SECS — SIGTERM, wait up to SECS, then SIGKILL; reaps it.
stop_process() {
  local name="$1" pid="$2" secs="$3"
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! exits_within "$pid" "$secs"; then
      warn "$name did not exit within $secs s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_checked NAME PID SECS LOG — like stop_process, but it is a failure (1, the
# reasons printed) when PID had already exited (a crash), when it needed SIGKILL
# (it would not stop within SECS of SIGTERM) or when it exited with a status other
# than 0. PID must be a child of this shell (its exit status is read with wait).
# Prints the tail of LOG on failure.
stop_checked() {
  local name="$1" pid="$2" secs="$3" logfile="$4" status=0
  [[ -n "$pid" ]] || { warn "$name: no pid (it never started?)"; return 1; }
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || status=$?
    warn "$name (pid $pid) was no longer running before it was stopped (exit status $status); last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
  fi
  log "stopping $name (pid $pid), expecting a clean exit within $secs s"
  kill -TERM "$pid" 2>/dev/null || true
  if ! exits_within "$pid" "$secs"; then
    warn "$name did not exit within $secs s of SIGTERM; killing it; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || status=$?
  if ((status != 0)); then
    warn "$name exited with status $status after SIGTERM; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
  fi
  log "$name exited cleanly"
}

# check_no_panics NAME LOG — a failure (1) when LOG holds a Rust panic message
# (`panicked at`); prints every such line with the lines around it.
check_no_panics() {
  local name="$1" logfile="$2"
  [[ -f "$logfile" ]] || { warn "$name: no log at $logfile"; return 1; }
  if grep -q 'panicked at' "$logfile"; then
    warn "$name panicked; from $logfile:"
    grep -n -B 2 -A 6 'panicked at' "$logfile" >&2 || true
    return 1
  fi
}

# stop_gateway — SIGTERM (the gateway drains), then SIGKILL after 10 s.
stop_gateway() {
  stop_process gateway "$GATEWAY_PID" 10
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
# shows up as an early exit, so that is retried with new ports. TLS is on when
# STACK_TLS_CERT and STACK_TLS_KEY are set, off otherwise (whatever the
# caller's environment says). Sets GW_PORT and GW_ADMIN_PORT.
start_gateway() {
  local attempt rc tls="off"
  : "${GATEWAY_BIN:?the caller sets GATEWAY_BIN}" "${GATEWAY_LOG:?the caller sets GATEWAY_LOG}"
  local -a tls_env=(-u GATEWAY_TLS_CERT -u GATEWAY_TLS_KEY)
  if [[ -n "$STACK_TLS_CERT" || -n "$STACK_TLS_KEY" ]]; then
    [[ -r "$STACK_TLS_CERT" && -r "$STACK_TLS_KEY" ]] ||
      { warn "STACK_TLS_CERT/STACK_TLS_KEY must both name readable files"; return 1; }
    tls_env=(GATEWAY_TLS_CERT="$STACK_TLS_CERT" GATEWAY_TLS_KEY="$STACK_TLS_KEY")
    tls="on"
  fi
  # Routes come from the wake service when one runs (start_wake_service), else
  # from the static route to the temp Postgres.
  local -a route_env
  if [[ -n "$WAKE_URL" ]]; then
    route_env=(GATEWAY_CONTROL_PLANE_URL="$WAKE_URL/proxy/api/v1"
      GATEWAY_CONTROL_PLANE_TOKEN="$WAKE_PROXY_TOKEN")
  else
    route_env=(GATEWAY_ROUTES="db=127.0.0.1:$PG_PORT")
  fi
  : >"$GATEWAY_LOG"
  for attempt in 1 2 3; do
    # GW_PUBLIC_PORT: a port chosen earlier (the wake service's --public-port), first try only.
    GW_PORT="$(free_port)"
    ((attempt > 1)) || [[ -z "${GW_PUBLIC_PORT:-}" ]] || GW_PORT="$GW_PUBLIC_PORT"
    GW_ADMIN_PORT="$(free_port)"
    [[ "$GW_PORT" != "$GW_ADMIN_PORT" ]] || continue
    echo "---- attempt $attempt: listen 127.0.0.1:$GW_PORT admin 127.0.0.1:$GW_ADMIN_PORT" >>"$GATEWAY_LOG"
    env -u GATEWAY_ROUTES -u GATEWAY_CONTROL_PLANE_URL -u GATEWAY_CONTROL_PLANE_TOKEN \
      "${tls_env[@]}" \
      RUST_LOG="${RUST_LOG:-info}" \
      GATEWAY_LISTEN="127.0.0.1:$GW_PORT" \
      GATEWAY_ADMIN_LISTEN="127.0.0.1:$GW_ADMIN_PORT" \
      "${route_env[@]}" \
      GATEWAY_DEFAULT_ENDPOINT="db" \
      "$GATEWAY_BIN" >>"$GATEWAY_LOG" 2>&1 &
    GATEWAY_PID=$!
    await_ready gateway "$GATEWAY_PID" "http://127.0.0.1:$GW_ADMIN_PORT/readyz" \
      "$GATEWAY_LOG" "$READY_TIMEOUT_SECS" && rc=0 || rc=$?
    case $rc in
      0)
        log "gateway ready on 127.0.0.1:$GW_PORT (admin $GW_ADMIN_PORT, TLS $tls), log: $GATEWAY_LOG"
        return 0
        ;;
      1) GATEWAY_PID="" ;; # exited early: a lost port race; try other ports
      *) return 1 ;;
    esac
  done
  return 1
}


# --- the wake service ----------------------------------------------------------

# new_token — 32 random hex characters.
new_token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# start_wake_service DATA_DIR PORTS [EXTRA_ARGS...] — the wake service
# (WAKE_BIN, log WAKE_LOG) on a free port, keeping state and computes under
# DATA_DIR and giving computes ports in PORTS (FIRST-LAST). Waits for /readyz,
# which answers once computes are reconciled and the default endpoint `db`
# exists (created on first start). Uses WAKE_ADMIN_TOKEN, generating one if
# unset, and WAKE_PROXY_TOKEN (the narrower token the gateway gets) likewise.
# Sets WAKE_PORT and WAKE_URL.
start_wake_service() {
  local data_dir="$1" ports="$2" attempt rc
  shift 2
  : "${WAKE_BIN:?the caller sets WAKE_BIN}" "${WAKE_LOG:?the caller sets WAKE_LOG}"
  [[ -n "$WAKE_ADMIN_TOKEN" ]] || WAKE_ADMIN_TOKEN="$(new_token)"
  [[ -n "$WAKE_PROXY_TOKEN" ]] || WAKE_PROXY_TOKEN="$(new_token)"
  : >"$WAKE_LOG"
  for attempt in 1 2 3; do
    WAKE_PORT="$(free_port)"
    echo "---- attempt $attempt: listen 127.0.0.1:$WAKE_PORT" >>"$WAKE_LOG"
    RUST_LOG="${RUST_LOG:-info}" \
      WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" \
      WAKE_PROXY_TOKEN="$WAKE_PROXY_TOKEN" \
      "$WAKE_BIN" serve --listen "127.0.0.1:$WAKE_PORT" --data-dir "$data_dir" \
      --compute-ports "$ports" "$@" >>"$WAKE_LOG" 2>&1 &
    WAKE_PID=$!
    WAKE_URL="http://127.0.0.1:$WAKE_PORT"
    # The first start runs initdb twice (state store and endpoint db): allow 120 s.
    await_ready "wake service" "$WAKE_PID" "$WAKE_URL/readyz" "$WAKE_LOG" 120 && rc=0 || rc=$?
    case $rc in
      0)
        log "wake service ready on $WAKE_URL (computes in $data_dir, ports $ports), log: $WAKE_LOG"
        return 0
        ;;
      1) WAKE_PID="" WAKE_URL="" ;; # exited early: a lost port race; try another port
      *) return 1 ;;
    esac
  done
  return 1
}

# stop_wake_service — SIGTERM (it suspends the computes it runs and stops its
# state store), then SIGKILL after 60 s.
stop_wake_service() {
  stop_process "wake service" "$WAKE_PID" 60
  WAKE_PID=""
}

# stop_computes_under DIR — last resort after a crash: stop every Postgres and
# PgBouncer whose files live under DIR (the wake service normally does this).
# Everything in a compute's directory is writable by that compute's OS user, so
# nothing read there is trusted as root: a pid from pgbouncer.pid is read and
# signalled by the owner of the pidfile's directory (who can only signal its own
# processes; never root, never a uid without a name), pg_ctl runs as the owner of
# its data directory, find follows no symlinks and only regular files are read,
# each step bounded by a timeout. Then, when DIR is a wake service's data
# directory, the OS users made for it go too (remove_compute_users in lib.sh).
stop_computes_under() {
  local dir="$1" file owner as_owner
  [[ -d "$dir" ]] || return 0
  while IFS= read -r file; do
    owner="$(stat -c %U "$(dirname "$file")" 2>/dev/null || true)"
    as_owner=(timeout 10)
    if is_root; then
      [[ -n "$owner" && "$owner" != UNKNOWN && "$owner" != root ]] || continue
      as_owner=(timeout 10 runuser -u "$owner" --)
    fi
    # shellcheck disable=SC2016 # expanded by the inner shell
    (cd / && "${as_owner[@]}" /bin/sh -c \
      'pid="$(head -c 32 "$1" | head -n 1)"; case "$pid" in "" | *[!0-9]*) exit 0 ;; esac; kill -TERM "$pid"' \
      sh "$file") >/dev/null 2>&1 || true
  done < <(find "$dir" -name pgbouncer.pid -type f 2>/dev/null)
  while IFS= read -r file; do
    owner="$(stat -c %U "$file" 2>/dev/null || true)"
    if is_root; then
      [[ -n "$owner" && "$owner" != UNKNOWN && "$owner" != root ]] || continue
    fi
    PG_OS_USER="$owner" timeout 120 bash "$SCRIPT_DIR/postgres.sh" stop "$file" >/dev/null 2>&1 || true
  done < <(find "$dir" -name postmaster.pid -type f -printf '%h\n' 2>/dev/null)
  remove_compute_users "$dir"
}
