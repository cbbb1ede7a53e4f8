-- The table this example reads and writes. Apply it once to the database DATABASE_URL names
-- (README.md shows how).
CREATE TABLE IF NOT EXISTS notes (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
  body       text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);
