# shellcheck shell=bash
# Helpers shared by the scripts in this folder. Source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It owns: logging, installing/checking the tools the dev stack needs, running a
# command as the unprivileged `postgres` OS user, and finding free TCP ports.
# Everything it prints goes to stderr, so callers keep stdout for data.

# Postgres 15 server binaries as packaged by Debian (postgresql-15).
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# The OS user that runs Postgres and PgBouncer when the scripts run as root
# (both refuse to run as root).
PG_OS_USER="${PG_OS_USER:-postgres}"
# Tag in front of every log line; scripts set their own.
LOG_TAG="${LOG_TAG:-scripts}"

# --- logging -----------------------------------------------------------------

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}

# --- users ---------------------------------------------------------------------

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# as_pg_user CMD... — run CMD as the postgres OS user when we are root, else as
# ourselves. Runs from / so a cwd the postgres user cannot read does not matter;
# pass absolute paths.
as_pg_user() {
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

# remove_compute_users DATA_DIR — when root: removes the OS users a wake service
# made for the computes and the state store of DATA_DIR (one per endpoint): those
# named w<tag>... whose passwd comment is "wake-service <tag> ...", <tag> being the
# first 6 hex digits of the SHA-256 of the real path of DATA_DIR/computes. Their
# processes are killed first. For after the wake service is gone and before
# DATA_DIR is deleted; a wake service started again on DATA_DIR makes them anew
# (and takes the files over). Every step is bounded.
remove_compute_users() {
  local dir="$1" computes tag name uid comment pids i
  is_root || return 0
  computes="$(realpath -e "$dir/computes" 2>/dev/null)" || return 0
  tag="$(printf '%s' "$computes" | sha256sum | cut -c1-6)"
  while IFS=: read -r name _ uid _ comment _; do
    [[ "$name" == "w$tag"* && "$comment" == "wake-service $tag "* && "$uid" != 0 ]] || continue
    for i in $(seq 50); do
      pids="$(pgrep -u "$uid" 2>/dev/null || true)"
      [[ -n "$pids" ]] || break
      # shellcheck disable=SC2086 # one pid per word
      kill -KILL $pids 2>/dev/null || true
      sleep 0.1
    done
    for i in $(seq 20); do
      timeout 30 userdel "$name" >/dev/null 2>&1 && break
      sleep 0.5
    done
    getent group "$name" >/dev/null && timeout 30 groupdel "$name" >/dev/null 2>&1
    getent passwd "$name" >/dev/null && warn "could not remove OS user $name"
  done < <(getent passwd)
  return 0
}

# --- dependencies --------------------------------------------------------------

# apt_install PKG... — non-interactive apt install (as root, or via sudo -n).
apt_install() {
  local sudo=()
  if ! is_root; then
    command -v sudo >/dev/null 2>&1 ||
      die "need to install $* but not root and no sudo; install them and retry"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "need to install $* but apt-get is missing; install them by hand"
  log "installing: $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >&2
}

# ensure_pg_deps — Postgres 15 server and client, PgBouncer and the small
# tools the scripts use; installs only what is missing so repeat runs are fast.
ensure_pg_deps() {
  local missing=()
  [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/postgres" ]] ||
    missing+=(postgresql-15)
  [[ -x "$PG_BIN/psql" ]] || missing+=(postgresql-client-15)
  command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] ||
    missing+=(pgbouncer)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if is_root; then
    command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
  fi
  if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
  fi
  if is_root; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 ||
      die "OS user '$PG_OS_USER' does not exist (the postgresql-15 package creates it)"
  fi
}

# ensure_deps [TOOL...] — ensure_pg_deps, then check that each developer tool
# exists (default: node npm cargo). These are not installed automatically.
ensure_deps() {
  ensure_pg_deps
  local tools=("$@") tool missing=()
  ((${#tools[@]} > 0)) || tools=(node npm cargo)
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]} > 0)); then
    die "missing required tools: ${missing[*]}
  cargo:    https://rustup.rs (rustup installs cargo)
  node/npm: Node.js 20 or newer, https://nodejs.org"
  fi
}

# --- ports -----------------------------------------------------------------------

# free_port — print a TCP port on 127.0.0.1 that the kernel says is free now.
# Another process may take it before you bind it; callers that can should retry.
free_port() {
  if command -v python3 >/dev/null 2>&1 &&
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null; then
    return 0
  fi
  # Fallback without python: a random high port that nothing answers on.
  local port i
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "could not find a free TCP port"
}

# --- small utilities ---------------------------------------------------------

# abs_path PATH — PATH made absolute (need not exist yet).
abs_path() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "${1#./}" ;;
  esac
}

# repo_root — the repository root (the parent of this scripts/ folder).
repo_root() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}
