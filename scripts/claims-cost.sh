#!/usr/bin/env bash
# What JWT claims cost inside Postgres: the SQL side of a JWT login (wake-service/src/jwt.sql,
# installed as the wake service installs it) on a throwaway Postgres 15, measured with pgbench
# and `track_functions = 'pl'`. The end-to-end figure (a /sql request with a JWT next to one
# with a password) is `make bench` scenario 8; this says where its Postgres share goes.
#
#   bash scripts/claims-cost.sh            # N=3000 transactions, ROWS=20000 reader calls
#
# Prints, in µs:
#   begin (per request)   auth.begin per call (track_functions), and of it gw_auth.verified,
#                         the check of MAC, pid, start time, role, expiry;
#   reader (per call)     auth.user_id() in a bound session, per row of
#                         SELECT count(auth.user_id()) FROM generate_series(1, ROWS), less the
#                         same count without it;
#   verify (per call)     gw_auth.verified per row the same way: what a reader would cost if it
#                         verified the envelope again instead of comparing auth.begin's digest.
# Everything is removed on exit (the cluster also if this script is killed outright).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
LOG_TAG="claims-cost"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

N="${N:-3000}"
ROWS="${ROWS:-20000}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer: '$N'"
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer: '$ROWS'"
for tool in psql pgbench; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install postgresql-client-15)"
done

PG_DATA=""
WORK=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$PG_DATA" ]]; then
    bash "$SCRIPT_DIR/postgres.sh" stop "$PG_DATA" >/dev/null 2>&1 || true
    [[ -f "$PG_DATA/PG_VERSION" ]] && rm -rf -- "$PG_DATA"
  fi
  [[ -n "$WORK" ]] && rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK="$(mktemp -d /tmp/claims-cost.XXXXXXXX)"

PG_PORT="$(free_port)"
PG_DATA="$(PG_FAST=1 bash "$SCRIPT_DIR/postgres.sh" temp "$PG_PORT")" ||
  die "could not start a temporary Postgres"
bash "$SCRIPT_DIR/postgres.sh" watch "$$" "$PG_DATA" 2>/dev/null

export PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGDATABASE=main
as_super() { PGPASSWORD=postgres psql -X -q -At -v ON_ERROR_STOP=1 -U postgres "$@"; }
as_user() { PGPASSWORD=bench psql -X -q -At -v ON_ERROR_STOP=1 -U authenticated "$@"; }

# The cluster part of the wake service's preparation (wake-service/src/jwt.rs: the owner of
# the auth schemas, who reads backend start times), then jwt.sql and one claims key. Only in
# this throwaway cluster may the measuring role read the key and mint envelopes itself.
as_super -c "CREATE ROLE gw_auth_owner NOLOGIN" -c "GRANT pg_read_all_stats TO gw_auth_owner" \
  -c "CREATE ROLE authenticated LOGIN PASSWORD 'bench'" \
  -c "ALTER SYSTEM SET track_functions = 'pl'" -c "SELECT pg_reload_conf()" >/dev/null
as_super -f "$ROOT/wake-service/src/jwt.sql" 2>/dev/null
as_super -c "INSERT INTO gw_auth.keys VALUES (1, decode(repeat('36', 64), 'hex'), decode(repeat('5c', 64), 'hex'), NULL)" \
  -c "GRANT EXECUTE ON FUNCTION auth.begin(text, text) TO authenticated" \
  -c "GRANT USAGE ON SCHEMA gw_auth TO authenticated" \
  -c "GRANT SELECT ON gw_auth.keys TO authenticated" \
  -c "GRANT EXECUTE ON FUNCTION gw_auth.verified(text, text) TO authenticated" \
  -c "CREATE SEQUENCE public.ctr" -c "GRANT USAGE ON SEQUENCE public.ctr TO authenticated"

# The next envelope of this backend (counter from public.ctr) and its MAC, as the gateway makes
# them (gateway/src/compute/claims.rs).
cat >"$WORK/mint.sql" <<'EOF'
CREATE TEMP VIEW minted AS
WITH e AS (
  SELECT format('{"v":1,"pid":%s,"bs":"%s","role":"authenticated","exp":9999999999,"ctr":%s,"claims":{"sub":"alice","role":"authenticated"}}',
                pg_backend_pid(), (extract(epoch FROM a.backend_start) * 1000000)::bigint,
                nextval('public.ctr')) AS env
    FROM pg_stat_get_activity(pg_backend_pid()) a)
SELECT env, 'v1.1.' || encode(sha256(k_opad || sha256(k_ipad || convert_to(env, 'UTF8'))), 'hex') AS mac
  FROM e, gw_auth.keys WHERE kid = 1;
EOF
# The same in one statement, for pgbench (one session, so the counter goes 1, 2, …).
cat >"$WORK/begin.sql" <<'EOF'
SELECT auth.begin(env, mac) FROM (SELECT format('{"v":1,"pid":%s,"bs":"%s","role":"authenticated","exp":9999999999,"ctr":%s,"claims":{"sub":"alice","role":"authenticated"}}', pg_backend_pid(), (extract(epoch FROM a.backend_start) * 1000000)::bigint, nextval('public.ctr')) AS env FROM pg_stat_get_activity(pg_backend_pid()) a) e, LATERAL (SELECT 'v1.1.' || encode(sha256(k_opad || sha256(k_ipad || convert_to(e.env, 'UTF8'))), 'hex') AS mac FROM gw_auth.keys WHERE kid = 1) m;
EOF

log "auth.begin: $N transactions (pgbench, one session)"
as_super -c "SELECT pg_stat_reset()" >/dev/null
PGPASSWORD=bench pgbench -n -U authenticated -M prepared -f "$WORK/begin.sql" -t "$N" >/dev/null
sleep 1 # the session's function statistics reach the shared counters when it ends
per_call() { # total µs per call of function $1, as counted by track_functions
  as_super -c "SELECT round(total_time::numeric * 1000 / calls, 1) FROM pg_stat_user_functions WHERE funcname = '$1' AND calls > 0"
}
begin_us="$(per_call begin)"
verified_us="$(per_call verified)"
[[ -n "$begin_us" && -n "$verified_us" ]] || die "no function statistics for auth.begin"

# One session: bind (counter 1), then time ROWS calls of each reader against the same count
# without it.
as_super -c "ALTER SEQUENCE public.ctr RESTART" >/dev/null
readers="$(as_user <<EOF
$(cat "$WORK/mint.sql")
SELECT auth.begin(env, mac) FROM minted;
SELECT auth.user_id() = 'alice' OR NULL;
CREATE TEMP TABLE env AS SELECT env, mac FROM minted;
CREATE FUNCTION pg_temp.ms(q text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t timestamptz; best float8 := 'infinity';
BEGIN
  FOR i IN 1..3 LOOP
    t := clock_timestamp(); EXECUTE q;
    best := least(best, extract(epoch FROM clock_timestamp() - t) * 1000);
  END LOOP;
  RETURN best;
END \$\$;
SELECT round(((pg_temp.ms('SELECT count(auth.user_id()) FROM generate_series(1, $ROWS)')
             - pg_temp.ms('SELECT count(i::text) FROM generate_series(1, $ROWS) i')) * 1000 / $ROWS)::numeric, 1),
       round(((pg_temp.ms('SELECT count(gw_auth.verified(e.env, e.mac)) FROM generate_series(1, $ROWS), pg_temp.env e')
             - pg_temp.ms('SELECT count(i::text) FROM generate_series(1, $ROWS) i')) * 1000 / $ROWS)::numeric, 1);
EOF
)"
# Lines: begin's true, the bound user's check (t), then the two figures.
mapfile -t lines <<<"$readers"
[[ "${lines[0]}" == t && "${lines[1]}" == t ]] || die "the session did not take its claims: ${readers//$'\n'/ }"
IFS='|' read -r reader_us verify_us <<<"${lines[2]}"

printf 'begin (per request): auth.begin %s µs, of it gw_auth.verified %s µs\n' "$begin_us" "$verified_us"
printf 'reader (per call):   auth.user_id() %s µs\n' "$reader_us"
printf 'verify (per call):   gw_auth.verified %s µs (a reader that verified again)\n' "$verify_us"
