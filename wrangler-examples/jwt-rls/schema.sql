-- Run as the database's owner (a password role, e.g. postgres) after the endpoint has a JWKS
-- rule (`wake-service jwks add`), which creates role `authenticated` and auth.user_id().
CREATE TABLE IF NOT EXISTS user_notes (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  owner      text NOT NULL DEFAULT (auth.user_id()),
  body       text NOT NULL CHECK (length(body) BETWEEN 1 AND 1000),
  created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE user_notes ENABLE ROW LEVEL SECURITY;
-- Each user reads and writes only the rows whose owner is the token's `sub`. A request with no
-- verified user has auth.user_id() NULL, which matches no row.
DROP POLICY IF EXISTS own_user_notes ON user_notes;
CREATE POLICY own_user_notes ON user_notes FOR ALL TO authenticated
  USING (owner = (SELECT auth.user_id()))
  WITH CHECK (owner = (SELECT auth.user_id()));
GRANT SELECT, INSERT, DELETE ON user_notes TO authenticated;
