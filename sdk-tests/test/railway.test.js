// The `railway` compute driver end to end with the real npm driver: a private wake service
// whose Railway API is the test double (wake-service/tests/railway_double, run by the
// `railway_double` example: every request validated against Railway's published schema, a
// real Postgres and PgBouncer behind the simulated services), and a private gateway in front.
// An endpoint bound to the Railway service is created, queried over HTTP (`neon()`) and
// WebSocket (`Pool`), suspended (deploymentStop), woken by the next query through the
// gateway (deploymentRedeploy; slow on purpose, so the gateway must wait for the driver's
// wake budget, not its retry count), resized and deleted.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import ws from 'ws';
import { neon, neonConfig, Pool } from '@neondatabase/serverless';
import { needEnv, freePort, Proc, childEnv, waitHttpReady, WakeApi, poll, reapUnder } from './stack.js';

const WAKE_BIN = needEnv('WAKE_BIN');
const GATEWAY_BIN = needEnv('GATEWAY_BIN');
const DOUBLE_BIN = needEnv('RAILWAY_DOUBLE_BIN');
const PG_BIN = needEnv('PG_BIN');
/** This file's compute port range (railway endpoints are given ports too, unused). */
const COMPUTE_PORTS = '22900-22949';
/** How long a new deployment stays DEPLOYING: longer than the gateway's retries without a budget. */
const DEPLOYING_MS = 7000;

const TOKEN = randomBytes(24).toString('hex');
const RAILWAY_TOKEN = `rw-${randomBytes(12).toString('hex')}`;
const PASSWORD = `app-${randomBytes(8).toString('hex')}`;

let tmp;
let double; // child process
let doubleUrl;
let wake;
let gateway;
let gwPort;
let api;

function url(id, { pooler = false } = {}) {
  return `postgres://app:${PASSWORD}@${id}${pooler ? '-pooler' : ''}.localtest.me:${gwPort}/appdb`;
}

async function doubleCalls() {
  const res = await fetch(doubleUrl.replace('/graphql/v2', '/_double/calls'));
  return res.json();
}

const sent = (calls, operation) => calls.calls.filter((c) => c.operation === operation && c.status === 200).length;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdkt-railway-'));
  fs.chmodSync(tmp, 0o711);
  const [pgPort, bouncerPort, wakePort, adminPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  gwPort = await freePort();
  double = spawn(DOUBLE_BIN, [path.join(tmp, 'double'), String(pgPort), String(bouncerPort)], {
    env: { ...process.env, RAILWAY_DOUBLE_TOKEN: RAILWAY_TOKEN, RAILWAY_DOUBLE_DEPLOYING_MS: String(DEPLOYING_MS), PG_FAST: '1' },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const first = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: double.stdout });
    lines.once('line', resolve);
    double.once('exit', (code) => reject(new Error(`the Railway double exited (${code})`)));
  });
  doubleUrl = JSON.parse(first).url;

  api = new WakeApi(`http://127.0.0.1:${wakePort}`, TOKEN);
  wake = new Proc('wake-service', WAKE_BIN, [
    'serve', '--listen', `127.0.0.1:${wakePort}`, '--data-dir', path.join(tmp, 'data'),
    '--compute-ports', COMPUTE_PORTS, '--compute-fast', '--pg-bin', PG_BIN, '--default-endpoint', '',
    '--railway-api-url', doubleUrl, '--railway-poll-interval-ms', '200',
  ], { env: childEnv({ WAKE_ADMIN_TOKEN: TOKEN, RAILWAY_API_TOKEN: RAILWAY_TOKEN }), log: path.join(tmp, 'wake-service.log') }).start();
  await waitHttpReady(`http://127.0.0.1:${wakePort}/readyz`, wake, 180_000);
  gateway = new Proc('gateway', GATEWAY_BIN, [
    '--listen', `127.0.0.1:${gwPort}`, '--admin-listen', `127.0.0.1:${adminPort}`,
    '--control-plane-url', `http://127.0.0.1:${wakePort}/proxy/api/v1`,
    // Two tries of a wake: without the driver's budget a slow resume would fail.
    '--wake-max-attempts', '2',
  ], { env: childEnv({ GATEWAY_CONTROL_PLANE_TOKEN: TOKEN }), log: path.join(tmp, 'gateway.log') }).start();
  await waitHttpReady(`http://127.0.0.1:${adminPort}/readyz`, gateway, 60_000);

  neonConfig.fetchEndpoint = () => `http://127.0.0.1:${gwPort}/sql`;
  neonConfig.webSocketConstructor = ws;
  neonConfig.useSecureWebSocket = false;
  neonConfig.wsProxy = (host, port) => `127.0.0.1:${gwPort}/v2?address=${host}:${port}`;
});

after(async () => {
  if (gateway) await gateway.stop('SIGTERM', 15_000);
  if (wake) await wake.stop('SIGTERM', 60_000);
  if (double && double.exitCode === null) {
    double.stdin.end();
    await new Promise((resolve) => {
      const timer = setTimeout(() => { double.kill('SIGKILL'); resolve(); }, 20_000);
      double.once('exit', () => { clearTimeout(timer); resolve(); });
    });
  }
  if (tmp) {
    await reapUnder(tmp, { pgBin: PG_BIN });
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('a Railway-bound endpoint through the gateway: query, suspend, wake on the next query, resize, delete', { timeout: 180_000 }, async () => {
  const binding = { project_id: 'prj-1', environment_id: 'env-1', service_id: 'svc-pg', pooler_service_id: 'svc-bouncer' };
  const created = await api.expect(201, 'POST', '/v1/endpoints', { body: { id: 'rw', driver: 'railway', railway: binding } });
  assert.equal(created.driver, 'railway');
  assert.equal(created.state, 'active');
  await api.expect(201, 'POST', '/v1/endpoints/rw/roles', { body: { name: 'app', password: PASSWORD } });
  await api.expect(201, 'POST', '/v1/endpoints/rw/databases', { body: { name: 'appdb', owner: 'app' } });

  // HTTP and WebSocket, direct and through the Railway PgBouncer service.
  const sql = neon(url('rw'));
  await sql`CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)`;
  await sql`INSERT INTO notes (body) VALUES (${'before the suspend'})`;
  const pool = new Pool({ connectionString: url('rw', { pooler: true }) });
  const viaPooler = await pool.query('SELECT body FROM notes');
  assert.deepEqual(viaPooler.rows, [{ body: 'before the suspend' }]);
  await pool.end();

  // Suspend: the deployment stops.
  await api.expect(200, 'POST', '/v1/endpoints/rw/suspend?force=true');
  assert.equal(sent(await doubleCalls(), 'DeploymentStop'), 1);

  // The next query wakes it: one redeploy, slower than the gateway's two tries of 3 s holds,
  // so only the wake budget the wake service names gets it through.
  const started = Date.now();
  const rows = await sql`SELECT body FROM notes`;
  const resumeMs = Date.now() - started;
  assert.deepEqual(rows, [{ body: 'before the suspend' }]);
  assert.ok(resumeMs >= DEPLOYING_MS, `the query waited for the redeploy (${resumeMs} ms)`);
  console.log(`railway double: a query on a suspended Railway endpoint answered after ${resumeMs} ms (DEPLOYING ${DEPLOYING_MS} ms)`);
  assert.equal(sent(await doubleCalls(), 'DeploymentRedeploy'), 1);

  // Resize: the service's limits follow.
  const resized = await api.expect(200, 'POST', '/v1/endpoints/rw/resize', { body: { cu: 1 } });
  assert.equal(resized.size?.limits, 'railway service limits');
  assert.ok(sent(await doubleCalls(), 'ServiceInstanceLimitsUpdate') >= 2);

  // Delete: the gateway refuses the endpoint, the Railway service is left as it was.
  await api.expect(204, 'DELETE', '/v1/endpoints/rw');
  let answer;
  await poll(async () => {
    try {
      answer = await neon(url('rw'))`SELECT 1 AS one`;
      return false;
    } catch (err) {
      answer = err.message;
      // Refused as any unknown endpoint is: its roles are gone with it.
      return /not found|unknown|does not exist|password authentication failed/i.test(err.message);
    }
  }, 'the deleted endpoint is refused', { timeoutMs: 30_000, intervalMs: 500 }).catch((e) => {
    throw new Error(`${e.message}; last answer: ${JSON.stringify(answer)}`);
  });
  const calls = await doubleCalls();
  assert.deepEqual(calls.violations, [], 'every request the driver sent matches Railway\'s schema');
  const fields = new Set(calls.calls.map((c) => c.root_field));
  for (const f of fields) {
    assert.ok(['deployments', 'variables', 'serviceInstanceLimitsUpdate', 'metrics', 'deploymentStop', 'deploymentRedeploy'].includes(f), `nothing removes the user's service: ${f}`);
  }
  const log = fs.readFileSync(wake.log, 'utf8');
  assert.ok(!log.includes(RAILWAY_TOKEN) && !log.includes(PASSWORD), 'no secret in the wake service log');
});
