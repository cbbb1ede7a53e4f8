-- Neon's public API (`/api/v2`) hands role passwords back, so a role's password is kept
-- next to its verifier, sealed under a key the store never sees (see password_vault.rs).
-- Roles created before this migration have none until their password is reset.
ALTER TABLE roles ADD COLUMN sealed_password text, ADD COLUMN pending_sealed_password text;

-- One-time settings every replica must agree on (the password key's fingerprint).
CREATE TABLE settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- What Neon's API shows as a branch's name (free-form, e.g. `test/<uuid>`); its id is the
-- branch's database name.
ALTER TABLE branches ADD COLUMN display_name text CHECK (length(display_name) BETWEEN 1 AND 256);

-- The operations Neon's API reports. Local operations finish before the API replies, so
-- each is recorded once, finished; the newest 1,000 per endpoint are kept.
CREATE TABLE api_operations (
    id uuid PRIMARY KEY,
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    branch_id text NOT NULL,
    action text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
);
CREATE INDEX api_operations_by_endpoint ON api_operations (endpoint_id, created_at DESC);
