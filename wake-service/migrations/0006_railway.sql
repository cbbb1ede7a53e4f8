-- The railway driver: an endpoint bound to a Railway Postgres service stores the services'
-- ids and the addresses resolved from their variables (never a password or token).
ALTER TABLE endpoints ADD COLUMN railway jsonb;
ALTER TABLE endpoints ADD CONSTRAINT endpoints_driver_target
    CHECK ((driver = 'railway') = (railway IS NOT NULL));
-- One endpoint per Railway service: two would suspend and resize one Postgres for each other.
CREATE UNIQUE INDEX endpoints_railway_service ON endpoints
    ((railway ->> 'environment_id'), (railway ->> 'service_id')) WHERE railway IS NOT NULL;
