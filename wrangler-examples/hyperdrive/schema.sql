-- The table this example reads and writes. Apply it once to the database the Hyperdrive
-- configuration (or localConnectionString) names (README.md shows how).
CREATE TABLE IF NOT EXISTS visits (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  path       text NOT NULL,
  country    text,
  created_at timestamptz NOT NULL DEFAULT now()
);
