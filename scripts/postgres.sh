#!/usr/bin/env bash
# The one place that knows how to run a Postgres on this machine. The dev stack
# (scripts/dev-up.sh), `make test` (scripts/test.sh) and the Rust integration
# test harness all call it as `bash scripts/postgres.sh <subcommand> ...`.
#
# Subcommands (paths may be relative; they are made absolute):
#   init DATADIR                create a cluster in DATADIR unless it already has one
#   start DATADIR PORT          start it on 127.0.0.1:PORT (no-op if already running there)
#   stop DATADIR                fast shutdown; no error when not running or missing
#   createdb DATADIR PORT NAME  create database NAME owned by postgres unless it exists
#   watch PID DATADIR           detached watcher: when PID exits, stop DATADIR and delete it
#   temp PORT                   new temp cluster in /tmp, started, with database `main`;
#                               prints only its DATADIR on stdout
#
# Every cluster has superuser `postgres` with password `postgres`, scram-sha-256
# auth, listens on 127.0.0.1 only and logs to DATADIR/postgres.log.
# Env: PG_FAST=1 turns off fsync and friends (tests set it). All diagnostics go
# to stderr; only `temp` writes to stdout.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
LOG_TAG="postgres.sh"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

PG_SUPERUSER="postgres"
PG_PASSWORD="postgres"
# How long pg_ctl waits for start/stop, in seconds.
PG_CTL_TIMEOUT="${PG_CTL_TIMEOUT:-60}"

usage() {
  sed -n '2,18p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- argument checks -----------------------------------------------------------

# datadir_arg PATH — absolute DATADIR, refusing characters that would need
# quoting inside pg_ctl's option string or Postgres' socket-directory list.
datadir_arg() {
  [[ -n "${1:-}" ]] || die "missing DATADIR"
  local dir
  dir="$(abs_path "$1")"
  dir="${dir%/}"
  [[ -n "$dir" ]] || die "refusing to use / as DATADIR"
  [[ "$dir" != *[[:space:]\'\"\\,]* ]] ||
    die "DATADIR must not contain spaces, quotes, backslashes or commas: $dir"
  printf '%s\n' "$dir"
}

port_arg() {
  if ! [[ "${1:-}" =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then
    die "invalid PORT: '${1:-}'"
  fi
  printf '%s\n' "$1"
}

# --- helpers -------------------------------------------------------------------

# is_running DATADIR — true when a postmaster is alive for DATADIR.
is_running() {
  [[ -f "$1/postmaster.pid" ]] || return 1
  as_pg_user "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1
}

# running_port DATADIR — the port in postmaster.pid (line 4).
running_port() {
  sed -n 4p "$1/postmaster.pid" 2>/dev/null || true
}

# ensure_traversable DIR — when root, make sure the postgres user can reach DIR:
# walk from / down and add o+x to any parent it cannot enter.
ensure_traversable() {
  is_root || return 0
  local path="" part
  local -a parts
  IFS='/' read -r -a parts <<<"${1#/}"
  for part in "${parts[@]}"; do
    [[ -n "$part" ]] || continue
    path="$path/$part"
    if ! runuser -u "$PG_OS_USER" -- test -x "$path" 2>/dev/null; then
      log "granting other users traverse (o+x) on $path so '$PG_OS_USER' can reach the data"
      chmod o+x "$path"
    fi
  done
}

# pick_locale — initdb locale flags: C.UTF-8 when the system has it.
pick_locale() {
  if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then
    printf '%s\n' "--locale=C.UTF-8"
  else
    printf '%s\n' "--no-locale"
  fi
}

# remove_datadir DATADIR — delete DATADIR, but only if it holds a cluster or
# is empty, so a wrong argument cannot wipe unrelated files.
remove_datadir() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  if [[ -f "$dir/PG_VERSION" ]] || [[ -z "$(ls -A "$dir" 2>/dev/null)" ]]; then
    rm -rf -- "$dir"
  else
    warn "not deleting $dir: it does not look like a Postgres data directory"
  fi
}

# process_alive PID — true while PID exists and is not a zombie.
process_alive() {
  local pid="$1" stat state
  if [[ -d /proc/self ]]; then
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    state="${stat##*) }"
    state="${state%% *}"
    [[ "$state" != "Z" ]]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

# --- subcommands ---------------------------------------------------------------

cmd_init() {
  (($# == 1)) || usage
  local datadir pwfile
  datadir="$(datadir_arg "$1")"
  if [[ -f "$datadir/PG_VERSION" ]]; then
    log "cluster already initialised in $datadir"
    return 0
  fi
  ensure_pg_deps

  mkdir -p "$datadir"
  if is_root; then
    chown "$PG_OS_USER:" "$datadir"
    ensure_traversable "$datadir"
  fi
  # initdb wants the directory to be 0700 or 0750.
  chmod 700 "$datadir"

  # The superuser password travels in a file so it never shows in `ps`.
  pwfile="$(mktemp)"
  # shellcheck disable=SC2064 # expand now: the local is gone when the trap fires
  trap "rm -f -- '$pwfile'" EXIT
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  if is_root; then chown "$PG_OS_USER:" "$pwfile"; fi

  local -a flags=(
    -D "$datadir"
    --auth=scram-sha-256
    --username="$PG_SUPERUSER"
    --pwfile="$pwfile"
    --encoding=UTF8
    "$(pick_locale)"
    --no-instructions
  )
  # Tests do not need the data flushed to disk.
  if [[ "${PG_FAST:-}" == "1" ]]; then flags+=(--no-sync); fi

  log "initialising cluster in $datadir"
  if ! as_pg_user "$PG_BIN/initdb" "${flags[@]}" >&2; then
    die "initdb failed for $datadir"
  fi
  rm -f -- "$pwfile"
  trap - EXIT
}

cmd_start() {
  (($# == 2)) || usage
  local datadir port
  datadir="$(datadir_arg "$1")"
  port="$(port_arg "$2")"
  [[ -f "$datadir/PG_VERSION" ]] || die "no cluster in $datadir (run: postgres.sh init $datadir)"
  ensure_pg_deps

  if is_running "$datadir"; then
    local running
    running="$(running_port "$datadir")"
    [[ "$running" == "$port" ]] ||
      die "Postgres in $datadir is already running on port $running, not $port"
    log "already running on 127.0.0.1:$port ($datadir)"
    return 0
  fi

  # Unix socket next to the data; a socket path longer than the kernel's limit
  # (107 bytes) cannot be bound, so such clusters get TCP only.
  local sockets="$datadir"
  if ((${#datadir} + ${#port} + 12 > 107)); then
    warn "DATADIR path too long for a unix socket; TCP only"
    sockets=""
  fi

  # pg_ctl hands this string to /bin/sh; datadir_arg rejected anything that
  # would need quoting beyond the single quotes here.
  local opts="-p $port -c listen_addresses=127.0.0.1"
  opts+=" -c unix_socket_directories='$sockets' -c max_connections=200"
  if [[ "${PG_FAST:-}" == "1" ]]; then
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi

  local logfile="$datadir/postgres.log"
  log "starting Postgres on 127.0.0.1:$port ($datadir)"
  if ! as_pg_user "$PG_BIN/pg_ctl" -D "$datadir" -l "$logfile" -w -t "$PG_CTL_TIMEOUT" \
    -o "$opts" start >&2; then
    warn "Postgres failed to start; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 2>/dev/null || true
    exit 1
  fi
}

cmd_stop() {
  (($# == 1)) || usage
  local datadir
  datadir="$(datadir_arg "$1")"
  if [[ ! -d "$datadir" ]] || ! is_running "$datadir"; then
    log "not running: $datadir"
    return 0
  fi
  log "stopping Postgres ($datadir)"
  if ! as_pg_user "$PG_BIN/pg_ctl" -D "$datadir" -m fast -w -t "$PG_CTL_TIMEOUT" stop >&2; then
    warn "fast shutdown failed; trying immediate"
    as_pg_user "$PG_BIN/pg_ctl" -D "$datadir" -m immediate -w -t "$PG_CTL_TIMEOUT" stop >&2
  fi
}

cmd_createdb() {
  (($# == 3)) || usage
  local datadir port name
  datadir="$(datadir_arg "$1")"
  port="$(port_arg "$2")"
  name="$3"
  [[ -n "$name" ]] || die "missing database NAME"
  ensure_pg_deps
  is_running "$datadir" || die "Postgres in $datadir is not running"

  # \gexec runs the generated CREATE only when the database is missing;
  # %I quotes the name as an identifier.
  PGPASSWORD="$PG_PASSWORD" PGSSLMODE=disable PGCONNECT_TIMEOUT=10 \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -v name="$name" \
    -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d postgres >&2 <<'SQL'
SELECT format('CREATE DATABASE %I OWNER postgres', :'name')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name')
\gexec
SQL
  log "database '$name' ready on 127.0.0.1:$port"
}

cmd_watch() {
  (($# == 2)) || usage
  local pid datadir
  [[ "$1" =~ ^[0-9]+$ ]] || die "invalid PID: '$1'"
  pid="$1"
  datadir="$(datadir_arg "$2")"
  # New session (no terminal signals), HUP ignored, every stdio stream on
  # /dev/null so the watcher never holds the caller's pipes open.
  setsid nohup bash "$SCRIPT_PATH" __watch_loop "$pid" "$datadir" \
    </dev/null >/dev/null 2>&1 &
  log "watching pid $pid: $datadir is stopped and deleted when it exits"
}

# The body of `watch`, running detached.
cmd_watch_loop() {
  local pid="$1" datadir="$2"
  while process_alive "$pid" && [[ -d "$datadir" ]]; do
    sleep 0.5
  done
  cmd_stop "$datadir" || true
  remove_datadir "$datadir"
}

cmd_temp() {
  (($# == 1)) || usage
  local port datadir
  port="$(port_arg "$1")"
  ensure_pg_deps
  datadir="$(mktemp -d /tmp/pgtemp.XXXXXXXX)"
  chmod 755 "$datadir"
  # Leave nothing behind when any step fails.
  # shellcheck disable=SC2064 # expand now
  trap "bash '$SCRIPT_PATH' stop '$datadir' || true; rm -rf -- '$datadir'" EXIT
  (cmd_init "$datadir")
  cmd_start "$datadir" "$port"
  cmd_createdb "$datadir" "$port" main
  trap - EXIT
  printf '%s\n' "$datadir"
}

main() {
  (($# >= 1)) || usage
  local sub="$1"
  shift
  case "$sub" in
    init) cmd_init "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    createdb) cmd_createdb "$@" ;;
    watch) cmd_watch "$@" ;;
    __watch_loop) cmd_watch_loop "$@" ;;
    temp) cmd_temp "$@" ;;
    -h | --help | help) usage ;;
    *)
      warn "unknown subcommand: $sub"
      usage
      ;;
  esac
}

main "$@"
