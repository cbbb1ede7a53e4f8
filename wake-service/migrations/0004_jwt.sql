-- JWT logins (issue 15): an endpoint's JWKS rules and the login material its JWT roles use.
-- Everything here is recorded before the compute is prepared with it, and preparing is
-- idempotent, so a crash in between loses nothing (the endpoint's sync_needed is set in the
-- same transaction, and the next sync prepares the compute again).

-- The rules, in the order they were added: the proxy API's `jwks` list, one JSON object each
-- (wake_api::proxy::JwksSettings).
CREATE TABLE jwks_rules (
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    id text NOT NULL,
    position bigserial,
    settings jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, id)
);

-- The key that authenticates claims envelopes to SQL (installed in gw_auth.keys of every
-- database of the endpoint), made with the endpoint's first rule.
CREATE TABLE jwt_keys (
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    kid integer NOT NULL,
    key bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, kid)
);

-- The JWT roles (never API roles): a random password's SCRAM verifier and ClientKey; the
-- password itself is never stored. A role stays once made, even when no rule names it any
-- more, so its name cannot become an API role's.
CREATE TABLE jwt_roles (
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    name text NOT NULL,
    secret text NOT NULL,
    client_key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, name)
);

-- endpoints.jwks (set by PATCH before) is no longer read: those rules never prepared the
-- compute, so they never allowed a login. Rules are added with POST .../jwks now.

-- A rule added or deleted is a change of the roles it names, for the gateways (which then
-- drop the endpoint's cached rules and the roles' idle connections): kind 'jwks'.
ALTER TABLE role_changes DROP CONSTRAINT role_changes_kind_check;
ALTER TABLE role_changes ADD CONSTRAINT role_changes_kind_check
    CHECK (kind IN ('password', 'drop', 'jwks'));
