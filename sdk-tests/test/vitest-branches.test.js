// The Vitest example in vitest-branches/ (one branch per test file, the application code
// unchanged), run with the real Vitest against this stack: every test passes, the two test
// files each saw a branch of their own (in parallel), and no branch is left after the run.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { GATEWAY_HOST, GATEWAY_PORT, requireEnv } from './helpers.js';
import { WakeApi, run } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const WAKE_ADMIN_TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const api = new WakeApi(WAKE_URL, WAKE_ADMIN_TOKEN);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const EP = { id: `vt-${RUN}`, owner: `vt_owner_${RUN}`, password: randomBytes(12).toString('base64url'), template: 'app_template' };
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-branches-'));

after(async () => {
  await api.remove(EP.id);
  fs.rmSync(TMP, { recursive: true, force: true });
});

test('vitest-branches: each test file on its own branch, all deleted after the run', { timeout: 180_000 }, async () => {
  await api.create(EP.id, { suspend_timeout_seconds: -1 });
  await api.createRole(EP.id, EP.owner, EP.password);
  await api.createDatabase(EP.id, EP.template, EP.owner);

  const log = path.join(TMP, 'branches.log');
  const report = path.join(TMP, 'report.json');
  const vitest = path.join(ROOT, 'node_modules', '.bin', 'vitest');
  const r = await run(vitest, ['run', '--config', path.join(ROOT, 'vitest-branches', 'vitest.config.js'), '--reporter=json', `--outputFile=${report}`], {
    timeoutMs: 150_000,
    env: {
      ...process.env,
      WAKE_URL,
      WAKE_ADMIN_TOKEN,
      ENDPOINT: EP.id,
      TEMPLATE_DATABASE: EP.template,
      DATABASE_OWNER: EP.owner,
      DATABASE_PASSWORD: EP.password,
      GATEWAY: `${GATEWAY_HOST}:${GATEWAY_PORT}`,
      BRANCH_LOG: log,
      DATABASE_URL: '', // the example sets it per test file
    },
  });
  assert.equal(r.code, 0, `vitest exited ${r.code}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
  const json = JSON.parse(fs.readFileSync(report, 'utf8'));
  assert.equal(json.numTotalTests, 4, JSON.stringify(json).slice(0, 500));
  assert.equal(json.numPassedTests, 4);

  const seen = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' '));
  assert.deepEqual(seen.map(([file]) => file).sort(), ['more-todos', 'todos']);
  const databases = seen.map(([, db]) => db);
  assert.equal(new Set(databases).size, 2, `two branches: ${databases}`);
  for (const db of databases) assert.match(db, /^br_[0-9a-f]{12}$/);
  const left = await api.expect(200, 'GET', `/v1/endpoints/${EP.id}/branches`);
  assert.deepEqual(left.branches, [], 'no branch outlives the run');
});
