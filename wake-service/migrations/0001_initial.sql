-- Endpoints, their roles and databases, and the compute lifecycle events metering reads.

CREATE TABLE endpoints (
    id text PRIMARY KEY,
    state text NOT NULL
        CHECK (state IN ('active', 'suspending', 'suspended', 'resuming', 'failed')),
    -- The operation in progress; a restarted wake service finishes or rolls back what it finds
    -- here.
    operation text CHECK (operation IN ('create', 'wake', 'suspend', 'delete')),
    operation_started_at timestamptz,
    driver text NOT NULL,
    -- Ports on the driver's host; unique, so two endpoints can never be given the same one.
    port integer NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    pooler_port integer NOT NULL UNIQUE CHECK (pooler_port BETWEEN 1 AND 65535),
    suspend_timeout_seconds bigint NOT NULL,
    min_cu double precision NOT NULL,
    max_cu double precision NOT NULL,
    current_cu double precision NOT NULL,
    jwks jsonb NOT NULL DEFAULT '[]',
    failure text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_active timestamptz,
    suspended_at timestamptz,
    CHECK (port <> pooler_port)
);

CREATE TABLE roles (
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    name text NOT NULL,
    -- SCRAM-SHA-256 verifier; the password itself is never stored.
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, name)
);

CREATE TABLE databases (
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    name text NOT NULL,
    owner text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, name)
);

-- Append-only. No foreign key: the history outlives a deleted endpoint (metering bills it).
CREATE TABLE compute_events (
    id bigserial PRIMARY KEY,
    endpoint_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,
    from_state text,
    to_state text,
    cu double precision,
    detail text
);
CREATE INDEX compute_events_endpoint_at ON compute_events (endpoint_id, at);

-- One-time actions already done (e.g. creating the default endpoint on first start).
CREATE TABLE bootstrap (
    name text PRIMARY KEY,
    done_at timestamptz NOT NULL DEFAULT now()
);
