// Vitest globalSetup: runs once, before any test file. It migrates the template database
// (every branch is a copy of it) and, after the run, deletes every branch this run made
// (a crashed run's branches expire by their TTL instead).
//
// Needs: WAKE_URL, WAKE_ADMIN_TOKEN (the wake service), ENDPOINT, TEMPLATE_DATABASE,
// DATABASE_OWNER and DATABASE_PASSWORD (the template's owner), GATEWAY (host:port).
import { neon, neonConfig } from '@neondatabase/serverless';
import { randomBytes } from 'node:crypto';
import { wake, env, templateUrl, useLocalGateway } from './branch.js';

export default async function setup({ provide }) {
  useLocalGateway(neonConfig);
  const sql = neon(templateUrl());
  await sql`CREATE TABLE IF NOT EXISTS todos (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false)`;
  await sql`TRUNCATE todos RESTART IDENTITY`;
  await sql`INSERT INTO todos (title) VALUES ('seeded')`;
  const run = randomBytes(6).toString('hex');
  provide('run', run);
  return async () => {
    await wake('DELETE', `/v1/endpoints/${env('ENDPOINT')}/branches?label=vitest-run=${run}`);
  };
}
