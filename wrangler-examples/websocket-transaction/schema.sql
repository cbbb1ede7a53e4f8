-- The tables this example reads and writes. Apply them once to the database DATABASE_URL names
-- (README.md shows how).
CREATE TABLE IF NOT EXISTS accounts (
  id      text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
  balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS transfers (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  from_id    text NOT NULL REFERENCES accounts (id),
  to_id      text NOT NULL REFERENCES accounts (id),
  amount     bigint NOT NULL CHECK (amount > 0),
  created_at timestamptz NOT NULL DEFAULT now()
);
