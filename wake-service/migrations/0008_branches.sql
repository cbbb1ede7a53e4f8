-- Branches: databases copied from another database of the same endpoint (`CREATE DATABASE …
-- TEMPLATE`), with labels and an expiry. A branch is a database, so its row in `databases`
-- comes first and takes the branch with it. `state` is the operation in progress, written
-- before it starts: a branch found `creating`, `resetting` or `deleting` under the endpoint's
-- lock was left so by a crash, and is finished (reset) or removed (the other two).
CREATE TABLE branches (
    endpoint_id text NOT NULL,
    name text NOT NULL,
    source text NOT NULL,
    data boolean NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    state text NOT NULL CHECK (state IN ('creating', 'ready', 'resetting', 'deleting')),
    created_at timestamptz NOT NULL DEFAULT now(),
    copied_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (endpoint_id, name),
    FOREIGN KEY (endpoint_id, name) REFERENCES databases (endpoint_id, name) ON DELETE CASCADE
);
CREATE INDEX branches_labels ON branches USING gin (labels);
CREATE INDEX branches_expiry ON branches (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX branches_unsettled ON branches (endpoint_id) WHERE state <> 'ready';
