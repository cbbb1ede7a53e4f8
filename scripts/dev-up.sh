#!/usr/bin/env bash
# `make up`: the local dev stack in the foreground. It owns building the
# gateway and the wake service (release) and running both. The wake service
# keeps its state in an embedded Postgres under DATA_DIR/state, runs each
# endpoint's Postgres + PgBouncer under DATA_DIR/computes/<id>, and creates the
# default endpoint `db` on first start. Ctrl-C (or SIGTERM) stops the gateway,
# then the wake service, which stops the computes; data stays in DATA_DIR.
#
# Env (all optional):
#   DATA_DIR              state and compute data (default: .data in the repo)
#   WAKE_LISTEN           wake service REST API (default 127.0.0.1:4400)
#   WAKE_COMPUTE_PORTS    ports for endpoints' Postgres and PgBouncer (default 20000-20999)
#   WAKE_ADMIN_TOKEN      admin token (default: generated once into DATA_DIR/admin-token)
#   WAKE_DEFAULT_PASSWORD password of endpoint db's role postgres (default postgres while the
#                         gateway listens on loopback only; otherwise generated once into
#                         DATA_DIR/default-password, and an existing `postgres` is replaced)
#   GATEWAY_LISTEN        SQL-over-HTTP, WebSocket and Postgres listener (default 127.0.0.1:4444)
#   GATEWAY_ADMIN_LISTEN  /metrics, /usage, /healthz, /readyz (default 127.0.0.1:4480)
#   GATEWAY_TLS_CERT      with GATEWAY_TLS_KEY: PEM certificate chain and key; the listener
#   GATEWAY_TLS_KEY       then also serves https, wss and Postgres TLS (default: TLS off)
#   RUST_LOG              gateway log filter (default info)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="dev-up"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/stack.sh
. "$SCRIPT_DIR/stack.sh"
REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"

WAKE_LISTEN="${WAKE_LISTEN:-127.0.0.1:4400}"
WAKE_COMPUTE_PORTS="${WAKE_COMPUTE_PORTS:-20000-20999}"
GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:4444}"
GATEWAY_ADMIN_LISTEN="${GATEWAY_ADMIN_LISTEN:-127.0.0.1:4480}"
RUST_LOG="${RUST_LOG:-info}"
GATEWAY_TLS_CERT="${GATEWAY_TLS_CERT:-}"
GATEWAY_TLS_KEY="${GATEWAY_TLS_KEY:-}"
DATA_DIR="${DATA_DIR:-$REPO_ROOT/.data}"
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
# Tokens, logs and passwords are for us alone; the computes' OS users only pass through to
# their own directories (the wake service keeps those private to each of them).
chmod 711 "$DATA_DIR"
GATEWAY_LOG="$DATA_DIR/gateway.log"
WAKE_LOG="$DATA_DIR/wake-service.log"
GATEWAY_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/gateway"
WAKE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/wake-service"
TOKEN_FILE="$DATA_DIR/admin-token"
PROXY_TOKEN_FILE="$DATA_DIR/proxy-token"
READY_TIMEOUT_SECS=30

# --- teardown: owns stopping everything this script started --------------------

STOPPED=0
# shellcheck disable=SC2317 # only called from the EXIT trap
teardown() {
  ((STOPPED == 0)) || return 0
  STOPPED=1
  trap - INT TERM
  stop_gateway
  # The wake service suspends the computes before it exits.
  stop_wake_service
  log "stopped"
}
trap teardown EXIT
trap 'exit 0' INT
trap 'exit 0' TERM

# --- build -------------------------------------------------------------------------

ensure_deps cargo curl
log "building the gateway and the wake service (cargo build --release -p gateway -p wake-service)"
cargo build --release -p gateway -p wake-service
# Everything this script writes from here on (tokens, logs) is private.
umask 077
[[ -x "$GATEWAY_BIN" ]] || die "no gateway binary at $GATEWAY_BIN after the build"
[[ -x "$WAKE_BIN" ]] || die "no wake-service binary at $WAKE_BIN after the build"

# --- the wake service (creates endpoint db on first start) -----------------------------

for url in "http://$GATEWAY_ADMIN_LISTEN/readyz" "http://$WAKE_LISTEN/readyz"; do
  if curl -fsS --max-time 2 "$url" >/dev/null 2>&1; then
    die "something already answers on $url; is the stack already up?"
  fi
done

# Before the wake service, `make up` ran endpoint db's Postgres itself, in the
# same directory the wake service would now initialise. Keep that data aside.
if [[ -f "$DATA_DIR/computes/db/pgdata/PG_VERSION" && ! -d "$DATA_DIR/state" ]]; then
  legacy="$DATA_DIR/legacy-db-$(date +%Y%m%d%H%M%S)"
  warn "moving the data of the previous dev stack to $legacy (the wake service now creates endpoint db)"
  bash "$SCRIPT_DIR/postgres.sh" stop "$DATA_DIR/computes/db/pgdata" || true
  mv "$DATA_DIR/computes/db" "$legacy"
fi

if [[ -z "${WAKE_ADMIN_TOKEN:-}" ]]; then
  if [[ ! -s "$TOKEN_FILE" ]]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE"
    log "generated the admin token in $TOKEN_FILE"
  fi
  WAKE_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
fi
# The gateway gets the narrower proxy token: it can wake endpoints and read role secrets,
# not create or delete anything. Neither token is exported: each process gets only its own.
if [[ ! -s "$PROXY_TOKEN_FILE" ]]; then
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$PROXY_TOKEN_FILE"
fi
WAKE_PROXY_TOKEN="$(cat "$PROXY_TOKEN_FILE")"
chmod 600 "$TOKEN_FILE" "$PROXY_TOKEN_FILE" 2>/dev/null || true

# A gateway reachable from other machines must not let anyone in as postgres/postgres: the
# default endpoint's password is then a random one, generated once and printed below.
DEFAULT_PASSWORD_FILE="$DATA_DIR/default-password"
gateway_is_public() {
  local host="${GATEWAY_LISTEN%:*}"
  host="${host#[}"
  host="${host%]}"
  case "$host" in
    127.* | localhost | ::1) return 1 ;;
    *) return 0 ;;
  esac
}
PUBLIC_PASSWORD=0
if gateway_is_public && [[ -z "${WAKE_DEFAULT_PASSWORD:-}" || "${WAKE_DEFAULT_PASSWORD:-}" == "postgres" ]]; then
  if [[ ! -s "$DEFAULT_PASSWORD_FILE" ]]; then
    od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DEFAULT_PASSWORD_FILE"
  fi
  WAKE_DEFAULT_PASSWORD="$(cat "$DEFAULT_PASSWORD_FILE")"
  PUBLIC_PASSWORD=1
  warn "the gateway listens on $GATEWAY_LISTEN (not loopback): endpoint db's role postgres gets the password in $DEFAULT_PASSWORD_FILE instead of 'postgres'"
fi
# Once generated, it stays endpoint db's password (also when the gateway is back on loopback).
if [[ -z "${WAKE_DEFAULT_PASSWORD:-}" && -s "$DEFAULT_PASSWORD_FILE" ]]; then
  WAKE_DEFAULT_PASSWORD="$(cat "$DEFAULT_PASSWORD_FILE")"
fi
DB_PASSWORD="${WAKE_DEFAULT_PASSWORD:-postgres}"

# The connection strings the API answers with (branches) name this gateway.
PUBLIC_SSLMODE="disable"
[[ -z "${GATEWAY_TLS_CERT:-}" ]] || PUBLIC_SSLMODE="require"

log "starting the wake service on $WAKE_LISTEN (computes on ports $WAKE_COMPUTE_PORTS), log also in $WAKE_LOG"
: >"$WAKE_LOG"
env -u WAKE_PROXY_TOKEN_FILE -u WAKE_ADMIN_TOKEN_FILE \
  RUST_LOG="$RUST_LOG" WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" WAKE_PROXY_TOKEN="$WAKE_PROXY_TOKEN" \
  WAKE_DEFAULT_PASSWORD="$DB_PASSWORD" \
  WAKE_PUBLIC_PORT="${WAKE_PUBLIC_PORT:-${GATEWAY_LISTEN##*:}}" \
  WAKE_PUBLIC_SSLMODE="${WAKE_PUBLIC_SSLMODE:-$PUBLIC_SSLMODE}" \
  "$WAKE_BIN" serve --listen "$WAKE_LISTEN" --data-dir "$DATA_DIR" \
  --compute-ports "$WAKE_COMPUTE_PORTS" > >(
    trap '' INT
    exec tee -a "$WAKE_LOG"
  ) 2>&1 &
WAKE_PID=$!
# The first start runs initdb for the state store and for endpoint db.
# Teardown stops it (or finds it gone) if it is not ready in time.
await_ready "wake service" "$WAKE_PID" "http://$WAKE_LISTEN/readyz" "$WAKE_LOG" 120 || exit 1
DB_JSON="$(curl -fsS --max-time 10 -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" \
  "http://$WAKE_LISTEN/v1/endpoints/db")" || DB_JSON=""
DB_DIRECT="$(sed -n 's/.*"direct":"\([^"]*\)".*/\1/p' <<<"$DB_JSON")"
DB_POOLER="$(sed -n 's/.*"pooler":"\([^"]*\)".*/\1/p' <<<"$DB_JSON")"

# Endpoint db made by an earlier, loopback-only run still has postgres/postgres: replace it
# before the gateway opens to the network (woken first: the last stop suspended it).
if ((PUBLIC_PASSWORD)) && [[ -n "$DB_DIRECT" ]] &&
  curl -fsS --max-time 70 -X POST -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" \
    "http://$WAKE_LISTEN/v1/endpoints/db/wake" >/dev/null &&
  PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -XAtq -w \
    -h "${DB_DIRECT%:*}" -p "${DB_DIRECT##*:}" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
  log "endpoint db's role postgres still has the default password; setting the one in $DEFAULT_PASSWORD_FILE"
  printf '{"password":"%s"}' "$DB_PASSWORD" | curl -fsS --max-time 60 -X PATCH \
    -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" -H 'Content-Type: application/json' --data-binary @- \
    "http://$WAKE_LISTEN/v1/endpoints/db/roles/postgres" >/dev/null ||
    die "could not change the default password of endpoint db; refusing to expose postgres/postgres on $GATEWAY_LISTEN"
fi

# --- gateway -------------------------------------------------------------------------

# TLS only when both files are given; otherwise no TLS variables reach the gateway.
tls_env=(-u GATEWAY_TLS_CERT -u GATEWAY_TLS_KEY)
TLS_ON=0
if [[ -n "$GATEWAY_TLS_CERT" || -n "$GATEWAY_TLS_KEY" ]]; then
  [[ -r "$GATEWAY_TLS_CERT" && -r "$GATEWAY_TLS_KEY" ]] ||
    die "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY must both name readable PEM files"
  GATEWAY_TLS_CERT="$(abs_path "$GATEWAY_TLS_CERT")"
  GATEWAY_TLS_KEY="$(abs_path "$GATEWAY_TLS_KEY")"
  tls_env=(GATEWAY_TLS_CERT="$GATEWAY_TLS_CERT" GATEWAY_TLS_KEY="$GATEWAY_TLS_KEY")
  TLS_ON=1
fi
TLS_STATE="off"
((TLS_ON == 0)) || TLS_STATE="on"

log "starting gateway on $GATEWAY_LISTEN (admin $GATEWAY_ADMIN_LISTEN, TLS $TLS_STATE), log also in $GATEWAY_LOG"
: >"$GATEWAY_LOG"
# Output goes to the terminal and to the log file. tee ignores SIGINT so the
# gateway can still log while it shuts down after Ctrl-C.
env -u WAKE_ADMIN_TOKEN -u WAKE_ADMIN_TOKEN_FILE -u WAKE_PROXY_TOKEN -u WAKE_PROXY_TOKEN_FILE \
  -u WAKE_DEFAULT_PASSWORD \
  "${tls_env[@]}" \
  RUST_LOG="$RUST_LOG" \
  GATEWAY_LISTEN="$GATEWAY_LISTEN" \
  GATEWAY_ADMIN_LISTEN="$GATEWAY_ADMIN_LISTEN" \
  GATEWAY_CONTROL_PLANE_URL="http://$WAKE_LISTEN/proxy/api/v1" \
  GATEWAY_CONTROL_PLANE_TOKEN="$WAKE_PROXY_TOKEN" \
  GATEWAY_DEFAULT_ENDPOINT="db" \
  "$GATEWAY_BIN" > >(
    trap '' INT
    exec tee -a "$GATEWAY_LOG"
  ) 2>&1 &
GATEWAY_PID=$!

# --- readiness: bounded wait for /readyz --------------------------------------------

await_ready gateway "$GATEWAY_PID" "http://$GATEWAY_ADMIN_LISTEN/readyz" "$GATEWAY_LOG" \
  "$READY_TIMEOUT_SECS" || exit 1

# --- banner --------------------------------------------------------------------------

GW_HOST="${GATEWAY_LISTEN%:*}"
GW_PORT="${GATEWAY_LISTEN##*:}"
# A wildcard bind is reached through loopback.
case "$GW_HOST" in
  0.0.0.0 | "[::]" | "") GW_HOST="127.0.0.1" ;;
esac

if ((TLS_ON)); then
  TLS_LINES="  TLS is on ($GATEWAY_TLS_CERT): https, wss and Postgres TLS on the same port.
    wss: neonConfig.useSecureWebSocket = true (the certificate must name $GW_HOST;
         for a private CA, start Node with NODE_EXTRA_CA_CERTS=<ca.crt>)
    psql \"postgres://postgres:$DB_PASSWORD@$GW_HOST:$GW_PORT/main?sslmode=verify-full&sslrootcert=<ca.crt>\""
else
  TLS_LINES="  TLS is off. To serve https, wss and Postgres TLS on the same port as well:
    GATEWAY_TLS_CERT=server.crt GATEWAY_TLS_KEY=server.key make up"
fi

cat <<EOF

  Serverless Postgres Gateway is up.

  Connection string (endpoint db, database main):
    postgres://postgres:$DB_PASSWORD@db.localtest.me:$GW_PORT/main
  db.localtest.me needs public DNS; without it use localhost (both route to endpoint db):
    postgres://postgres:$DB_PASSWORD@localhost:$GW_PORT/main

  Endpoint db's Postgres and PgBouncer (transaction mode), bypassing the gateway:
    psql postgres://postgres:$DB_PASSWORD@${DB_DIRECT:-?}/main
    psql postgres://postgres:$DB_PASSWORD@${DB_POOLER:-?}/main
  Through the gateway, the host db-pooler.localtest.me (or options=endpoint=db-pooler)
  selects the PgBouncer.

  Wake service (endpoints, roles, databases): http://$WAKE_LISTEN   token: $TOKEN_FILE
    WAKE_ADMIN_TOKEN_FILE=$TOKEN_FILE $WAKE_BIN endpoints list
    WAKE_ADMIN_TOKEN_FILE=$TOKEN_FILE $WAKE_BIN endpoints create myapp
    WAKE_ADMIN_TOKEN_FILE=$TOKEN_FILE $WAKE_BIN roles create myapp alice --password-stdin

  psql (or any Postgres client) through the gateway, on the same port:
    psql "postgres://postgres:$DB_PASSWORD@$GW_HOST:$GW_PORT/main"

  With @neondatabase/serverless over HTTP (neon, sql.transaction):
    import { neon, neonConfig } from '@neondatabase/serverless';
    neonConfig.fetchEndpoint = (host, port) => \`http://$GW_HOST:$GW_PORT/sql\`;
    const sql = neon('postgres://postgres:$DB_PASSWORD@db.localtest.me:$GW_PORT/main');

  Over WebSocket (Client, Pool, interactive transactions). Node 20 has no global
  WebSocket, so give the driver the ws package (npm i ws). wsProxy dials the gateway
  and passes the connection string's host as ?address=, which names the endpoint:
    import { Pool, neonConfig } from '@neondatabase/serverless';
    import ws from 'ws';
    neonConfig.webSocketConstructor = ws;
    neonConfig.useSecureWebSocket = false;
    neonConfig.wsProxy = (host, port) => \`$GW_HOST:$GW_PORT/v2?address=\${host}:\${port}\`;
    const pool = new Pool({ connectionString: 'postgres://postgres:$DB_PASSWORD@db.localtest.me/main' });

$TLS_LINES

$( ((PUBLIC_PASSWORD)) && printf '  The gateway listens beyond loopback, so endpoint db'"'"'s role postgres has a random password\n  (above, and in %s); change it with: wake-service roles update db postgres --password-stdin\n\n' "$DEFAULT_PASSWORD_FILE")
  Admin: http://$GATEWAY_ADMIN_LISTEN/metrics  /usage  /healthz  /readyz
  Data:  $DATA_DIR   Logs: $GATEWAY_LOG, $WAKE_LOG
  Press Ctrl-C to stop.

EOF

# --- foreground: wait until Ctrl-C, SIGTERM or the gateway exits --------------------

wait "$GATEWAY_PID" && rc=0 || rc=$?
GATEWAY_PID=""
warn "gateway exited with status $rc"
exit "$rc"
