#!/usr/bin/env bash
# stop-computes.sh DIR — stop every Postgres and PgBouncer whose files live
# under DIR (a wake service's data dir). The wake service does this itself on
# SIGTERM; this is for `make clean-data` and for cleanup after a kill -9.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="stop-computes"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/stack.sh
. "$SCRIPT_DIR/stack.sh"
[[ -n "${1:-}" ]] || die "usage: stop-computes.sh DIR"
stop_computes_under "$1"
