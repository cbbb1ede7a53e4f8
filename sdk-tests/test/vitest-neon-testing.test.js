// neon-testing (the npm package), unchanged, against this stack's Neon API: the Vitest suite
// in vitest-neon-testing/ gives each of its two test files a branch through
// POST /api/v2/projects/{id}/branches and connection_uri, the application code (the driver's
// neon() and Pool) runs on it, and neon-testing deletes the branches after the run.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { GATEWAY_HOST, GATEWAY_PORT, neon, requireEnv } from './helpers.js';
import { WakeApi, run } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const WAKE_ADMIN_TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const api = new WakeApi(WAKE_URL, WAKE_ADMIN_TOKEN);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const EP = { id: `nt-${RUN}`, role: 'neondb_owner', password: randomBytes(12).toString('base64url'), db: 'neondb' };
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-testing-'));

after(async () => {
  await api.remove(EP.id);
  fs.rmSync(TMP, { recursive: true, force: true });
});

test('neon-testing: a branch per test file through Neon\'s API, deleted after the run', { timeout: 180_000 }, async () => {
  await api.create(EP.id, { suspend_timeout_seconds: -1 });
  await api.createRole(EP.id, EP.role, EP.password);
  await api.createDatabase(EP.id, EP.db, EP.role);
  const sql = neon(`postgres://${EP.role}:${EP.password}@${EP.id}.localtest.me:${GATEWAY_PORT}/${EP.db}`);
  await sql`CREATE TABLE todos (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false)`;
  await sql`INSERT INTO todos (title) VALUES ('seeded')`;

  const log = path.join(TMP, 'branches.log');
  const report = path.join(TMP, 'report.json');
  const vitest = path.join(ROOT, 'node_modules', '.bin', 'vitest');
  const r = await run(vitest, ['run', '--config', path.join(ROOT, 'vitest-neon-testing', 'vitest.config.js'), '--reporter=json', `--outputFile=${report}`], {
    timeoutMs: 150_000,
    env: {
      ...process.env,
      NEON_API_KEY: WAKE_ADMIN_TOKEN,
      NEON_PROJECT_ID: EP.id,
      NEON_API_HOST: `${WAKE_URL}/api/v2`,
      // more-todos.test.js names them; todos.test.js lets neon-testing choose.
      NEON_DATABASE_NAME: EP.db,
      NEON_ROLE_NAME: EP.role,
      GATEWAY: `${GATEWAY_HOST}:${GATEWAY_PORT}`,
      BRANCH_LOG: log,
      DATABASE_URL: '', // neon-testing sets it per test file
    },
  });
  assert.equal(r.code, 0, `vitest exited ${r.code}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
  const json = JSON.parse(fs.readFileSync(report, 'utf8'));
  assert.equal(json.numTotalTests, 3, JSON.stringify(json).slice(0, 500));
  assert.equal(json.numPassedTests, 3);

  const seen = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' '));
  assert.deepEqual(seen.map(([file]) => file).sort(), ['more-todos', 'todos']);
  const databases = seen.map(([, db]) => db);
  assert.equal(new Set(databases).size, 2, `two branches: ${databases}`);

  // neon-testing made them with its annotation and deleted them afterwards.
  const ops = await api.expect(200, 'GET', `/api/v2/projects/${EP.id}/operations`);
  const made = ops.operations.filter((o) => o.action === 'create_branch').map((o) => o.branch_id);
  assert.deepEqual(made.sort(), [...databases].sort());
  const left = await api.expect(200, 'GET', `/api/v2/projects/${EP.id}/branches`);
  assert.deepEqual(left.branches.map((b) => b.name), ['main'], 'no branch outlives the run');
  assert.deepEqual(await sql`SELECT title FROM todos`, [{ title: 'seeded' }], 'the parent is untouched');
});
