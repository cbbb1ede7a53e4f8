-- The railway driver: an endpoint bound to a Railway Postgres service stores the services'
-- ids and the addresses resolved from their variables (never a password or token).
ALTER TABLE endpoints ADD COLUMN railway jsonb;
ALTER TABLE endpoints ADD CONSTRAINT endpoints_driver_target
    CHECK ((driver = 'railway') = (railway IS NOT NULL));
