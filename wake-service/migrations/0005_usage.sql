-- Metering. Usage rows carry the endpoint's id without a foreign key: what an endpoint used
-- is still owed after it is deleted.

-- One row per stretch of time an endpoint's compute ran at one size: opened in the same
-- transaction as the state change to `active` (its event's time), closed in the one that
-- leaves it (suspended, failed, deleted). `metered_to` is how far consumption events cover
-- the run (the checkpoint): after a crash, a compute found dead is taken to have run until
-- then.
CREATE TABLE compute_runs (
    id bigserial PRIMARY KEY,
    endpoint_id text NOT NULL,
    cu double precision NOT NULL CHECK (cu > 0),
    started_at timestamptz NOT NULL,
    metered_to timestamptz NOT NULL,
    stopped_at timestamptz,
    CHECK (metered_to >= started_at),
    CHECK (stopped_at IS NULL OR stopped_at >= started_at)
);
CREATE UNIQUE INDEX compute_runs_open ON compute_runs (endpoint_id) WHERE stopped_at IS NULL;
CREATE INDEX compute_runs_endpoint ON compute_runs (endpoint_id, started_at);
CREATE INDEX compute_runs_unmetered ON compute_runs (id)
    WHERE stopped_at IS NULL OR metered_to < stopped_at;

-- Per endpoint, the exact compute time exported so far. Each event carries the difference of
-- the rounded totals before and after it, so an endpoint's events add up to its rounded total
-- (off by half a unit at most), however short its runs.
CREATE TABLE compute_exported (
    endpoint_id text PRIMARY KEY,
    active_seconds numeric NOT NULL,
    compute_unit_seconds numeric NOT NULL
);

-- Gateway traffic per endpoint and hour (the hour a report was applied in).
CREATE TABLE traffic_hours (
    endpoint_id text NOT NULL,
    hour timestamptz NOT NULL,
    ingress_bytes bigint NOT NULL DEFAULT 0,
    egress_bytes bigint NOT NULL DEFAULT 0,
    queries bigint NOT NULL DEFAULT 0,
    sessions bigint NOT NULL DEFAULT 0,
    connections bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint_id, hour)
);

-- Egress applied but not yet exported as consumption events.
CREATE TABLE traffic_unexported (
    endpoint_id text PRIMARY KEY,
    since timestamptz NOT NULL,
    egress_bytes bigint NOT NULL DEFAULT 0
);

-- The usage reports applied, by id: a report delivered again is acknowledged, not counted.
CREATE TABLE usage_reports (
    id text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_reports_applied_at ON usage_reports (applied_at);

-- Logical size of an endpoint's databases, sampled while it runs and before it suspends.
CREATE TABLE storage_samples (
    id bigserial PRIMARY KEY,
    endpoint_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    bytes bigint NOT NULL CHECK (bytes >= 0),
    exported boolean NOT NULL DEFAULT false
);
CREATE INDEX storage_samples_endpoint ON storage_samples (endpoint_id, at);
CREATE INDEX storage_samples_unexported ON storage_samples (id) WHERE NOT exported;

-- Consumption events in Neon's format, written by one transaction at a time (each takes a
-- lock on the table), so `seq` grows in commit order and a reader paging by `seq` never
-- skips an event that commits later with a smaller one.
CREATE TABLE usage_events (
    seq bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    endpoint_id text NOT NULL,
    metric text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('incremental', 'absolute')),
    start_time timestamptz,
    stop_time timestamptz,
    at timestamptz,
    value bigint NOT NULL CHECK (value >= 0),
    CHECK ((kind = 'incremental') = (start_time IS NOT NULL AND stop_time IS NOT NULL)),
    CHECK ((kind = 'absolute') = (at IS NOT NULL))
);

-- How far the push sink (`--usage-sink-url`) has delivered: the last `seq` it got a 2xx for.
CREATE TABLE usage_sink (
    id integer PRIMARY KEY CHECK (id = 1),
    delivered bigint NOT NULL
);
INSERT INTO usage_sink (id, delivered) VALUES (1, 0);
