-- JWT claims in SQL (the envelope the gateway's compute::claims makes): run as a superuser in every database, after the
-- cluster part (the role gw_auth_owner exists). Idempotent; stock Postgres 15 only. The
-- search_path is set first, so that no object a tenant made is resolved by this script.

SET search_path = pg_catalog, pg_temp;

CREATE SCHEMA IF NOT EXISTS gw_auth AUTHORIZATION gw_auth_owner;
ALTER SCHEMA gw_auth OWNER TO gw_auth_owner;
REVOKE ALL ON SCHEMA gw_auth FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION gw_auth_owner;
ALTER SCHEMA auth OWNER TO gw_auth_owner;
REVOKE ALL ON SCHEMA auth FROM PUBLIC;
GRANT USAGE ON SCHEMA auth TO PUBLIC;

-- The claims keys: k_ipad/k_opad = the 32-byte key zero-padded to 64 bytes, XOR 0x36 / 0x5c.
CREATE TABLE IF NOT EXISTS gw_auth.keys (
    kid int PRIMARY KEY,
    k_ipad bytea NOT NULL,
    k_opad bytea NOT NULL,
    not_after timestamptz
);
ALTER TABLE gw_auth.keys OWNER TO gw_auth_owner;
REVOKE ALL ON gw_auth.keys FROM PUBLIC;

-- The per-backend anti-replay register: currval() is session-local and non-transactional.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS gw_auth.reg MINVALUE 0;
ALTER SEQUENCE gw_auth.reg OWNER TO gw_auth_owner;
REVOKE ALL ON SEQUENCE gw_auth.reg FROM PUBLIC;

-- The envelope auth.begin accepted last in this session, as the first 16 bytes of its
-- SHA-256 in two session-local registers (currval() again) that only gw_auth_owner can set:
-- auth.session checks the session's envelope against them instead of verifying it again.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS gw_auth.held_hi
    MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS gw_auth.held_lo
    MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807;
ALTER SEQUENCE gw_auth.held_hi OWNER TO gw_auth_owner;
ALTER SEQUENCE gw_auth.held_lo OWNER TO gw_auth_owner;
REVOKE ALL ON SEQUENCE gw_auth.held_hi, gw_auth.held_lo FROM PUBLIC;

-- gw_auth.verified(env, mac): the envelope as jsonb when its MAC holds under a live key and it
-- is bound to this backend (pid and start time), to the session's login role, and not
-- expired (by the statement's clock); else NULL. The counter is the caller's to check. Only
-- auth.begin (running as gw_auth_owner) calls it: nobody else has USAGE on gw_auth. It runs
-- with auth.begin's search_path (no SET clause of its own: one GUC change less per call). The
-- MAC is checked (and the digests compared, which hides memcmp's early exit) before any cast
-- or JSON parse.
CREATE OR REPLACE FUNCTION gw_auth.verified(p_env text, p_mac text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $fn$
DECLARE
    k gw_auth.keys%ROWTYPE;
    env jsonb;
    my_bs text;
BEGIN
    IF p_env IS NULL OR p_env = '' OR p_mac IS NULL
       OR p_mac !~ '^v1\.[0-9]{1,9}\.[0-9a-f]{64}$' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO k FROM gw_auth.keys
     WHERE kid = split_part(p_mac, '.', 2)::int
       AND (not_after IS NULL OR not_after > statement_timestamp());
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF sha256(sha256(k.k_opad || sha256(k.k_ipad || convert_to(p_env, 'UTF8'))))
       <> sha256(decode(split_part(p_mac, '.', 3), 'hex')) THEN
        RETURN NULL;
    END IF;
    env := p_env::jsonb;
    SELECT (extract(epoch FROM a.backend_start) * 1000000)::bigint::text INTO my_bs
      FROM pg_stat_get_activity(pg_backend_pid()) a;
    IF jsonb_typeof(env) IS DISTINCT FROM 'object'
       OR env ->> 'v' IS DISTINCT FROM '1'
       OR env ->> 'pid' IS DISTINCT FROM pg_backend_pid()::text
       OR my_bs IS NULL OR env ->> 'bs' IS DISTINCT FROM my_bs
       OR env ->> 'role' IS DISTINCT FROM session_user::text
       OR coalesce(env ->> 'exp', '') !~ '^[0-9]{1,12}$'
       OR (env ->> 'exp')::bigint <= extract(epoch FROM statement_timestamp())
       OR coalesce(env ->> 'ctr', '') !~ '^[0-9]{1,18}$' THEN
        RETURN NULL;
    END IF;
    RETURN env;
END
$fn$;
ALTER FUNCTION gw_auth.verified(text, text) OWNER TO gw_auth_owner;
REVOKE ALL ON FUNCTION gw_auth.verified(text, text) FROM PUBLIC;

-- auth.begin(env, mac): clears the claims, then sets them from the envelope when it is
-- verified and its counter is above the backend's register (1 when the register is unset),
-- which it then moves up to: an envelope is taken once, and never after a later one.
CREATE OR REPLACE FUNCTION auth.begin(p_env text, p_mac text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    env jsonb;
    ctr bigint;
    cur bigint;
    digest bytea;
BEGIN
    PERFORM set_config('gw_auth.claims', '', false), set_config('gw_auth.mac', '', false);
    env := gw_auth.verified(p_env, p_mac);
    IF env IS NULL THEN
        RETURN false;
    END IF;
    ctr := (env ->> 'ctr')::bigint;
    BEGIN
        cur := currval('gw_auth.reg');
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        cur := NULL; -- never set in this session (or DISCARD SEQUENCES ran)
    END;
    IF (cur IS NULL AND ctr <> 1) OR (cur IS NOT NULL AND ctr <= cur) THEN
        RETURN false;
    END IF;
    PERFORM setval('gw_auth.reg', ctr);
    digest := sha256(convert_to(p_env, 'UTF8'));
    PERFORM setval('gw_auth.held_hi', ('x' || encode(substr(digest, 1, 8), 'hex'))::bit(64)::bigint),
            setval('gw_auth.held_lo', ('x' || encode(substr(digest, 9, 8), 'hex'))::bit(64)::bigint);
    PERFORM set_config('gw_auth.claims', p_env, false), set_config('gw_auth.mac', p_mac, false);
    RETURN true;
END
$fn$;
ALTER FUNCTION auth.begin(text, text) OWNER TO gw_auth_owner;

-- auth.session(): the claims of the envelope auth.begin accepted last in this session, or
-- NULL: the session's envelope (gw_auth.claims) must have the digest auth.begin held, and not
-- be expired. A session that sets gw_auth.claims without auth.begin ever having run in it
-- gets an error (currval of an unset register), never claims. No EXCEPTION block (parallel
-- plans).
CREATE OR REPLACE FUNCTION auth.session() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    env_text text := current_setting('gw_auth.claims', true);
    env jsonb;
BEGIN
    IF env_text IS NULL OR env_text = '' THEN
        RETURN NULL;
    END IF;
    IF substr(sha256(convert_to(env_text, 'UTF8')), 1, 16)
       <> int8send(currval('gw_auth.held_hi')) || int8send(currval('gw_auth.held_lo')) THEN
        RETURN NULL;
    END IF;
    env := env_text::jsonb;
    IF (env ->> 'exp')::bigint <= extract(epoch FROM statement_timestamp()) THEN
        RETURN NULL;
    END IF;
    RETURN nullif(env -> 'claims', 'null'::jsonb);
END
$fn$;
ALTER FUNCTION auth.session() OWNER TO gw_auth_owner;

-- auth.jwt(), auth.user_id() and auth.uid(): SQL-standard bodies, parsed here (under this
-- script's search_path, so nobody's objects are resolved) and inlined into the queries that
-- call them.
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL RESTRICTED
BEGIN ATOMIC
    SELECT auth.session();
END;
ALTER FUNCTION auth.jwt() OWNER TO gw_auth_owner;

CREATE OR REPLACE FUNCTION auth.user_id() RETURNS text
LANGUAGE sql STABLE PARALLEL RESTRICTED
BEGIN ATOMIC
    SELECT auth.session() ->> 'sub';
END;
ALTER FUNCTION auth.user_id() OWNER TO gw_auth_owner;

CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE PARALLEL RESTRICTED
BEGIN ATOMIC
    SELECT CASE
        WHEN s.sub ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN s.sub::uuid
    END
    FROM (SELECT auth.session() ->> 'sub' AS sub) s;
END;
ALTER FUNCTION auth.uid() OWNER TO gw_auth_owner;

GRANT EXECUTE ON FUNCTION auth.session(), auth.jwt(), auth.user_id(), auth.uid() TO PUBLIC;

-- Hygiene: sessions of one role must not cancel or end each other's (API roles keep it
-- through pg_signal_backend; JWT roles are members of nothing).
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(int, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(int) TO pg_signal_backend;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(int, bigint) TO pg_signal_backend;
