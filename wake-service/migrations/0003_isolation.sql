-- Tenant isolation: role operations that survive a crash, role changes gateways must hear
-- about, and ports that are not handed out again at once.

-- A role operation is recorded here before Postgres is changed, so that a crash in between is
-- finished on the next start: 'create' (the role may not exist in Postgres yet), 'update' (the
-- new verifier is in pending_secret), 'delete'. Roles pending create or delete are not served
-- to gateways nor written into PgBouncer's auth file.
ALTER TABLE roles ADD COLUMN pending text CHECK (pending IN ('create', 'update', 'delete'));
ALTER TABLE roles ADD COLUMN pending_secret text;

-- The compute's roles and security baseline must be applied again from the store the next
-- time it runs. True for endpoints made by earlier versions (their roles had CREATEROLE, their
-- PgBouncer looked passwords up with an auth_query as superuser); new endpoints start false.
ALTER TABLE endpoints ADD COLUMN sync_needed boolean NOT NULL DEFAULT true;
ALTER TABLE endpoints ALTER COLUMN sync_needed SET DEFAULT false;

-- Password changes and drops, in order. Gateways learn them with their activity reports and
-- drop what they cached for these roles; the API waits until every live gateway has.
CREATE TABLE role_changes (
    id bigserial PRIMARY KEY,
    endpoint_id text NOT NULL,
    role text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('password', 'drop')),
    at timestamptz NOT NULL DEFAULT now()
);

-- The gateways that report activity: when each last did, how often it reports, and the
-- newest role change it has applied.
CREATE TABLE gateways (
    id text PRIMARY KEY,
    seen_at timestamptz NOT NULL,
    interval_ms bigint NOT NULL,
    role_changes_applied bigint
);

-- Ports of deleted endpoints. They are given out again only after a cool-down, so that a
-- gateway still holding the old route cannot reach the next tenant's compute on them.
CREATE TABLE released_ports (
    port integer PRIMARY KEY,
    released_at timestamptz NOT NULL
);
