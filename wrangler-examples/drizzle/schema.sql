-- The tables of src/schema.ts. Apply them once to the database DATABASE_URL names (README.md
-- shows how; `drizzle-kit push` with src/schema.ts does the same).
CREATE TABLE IF NOT EXISTS projects (
  id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS todos (
  id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
  done       boolean NOT NULL DEFAULT false
);
