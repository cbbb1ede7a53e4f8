// Autoscaling on the main stack, with the real driver through the gateway: an endpoint with
// min_cu 0.25 and max_cu 2 under CPU-heavy queries (HTTP `neon()` and WebSocket `Pool`) grows
// within seconds (the wake service samples every 2 s), its size shows the pools and the pending
// restart-only settings, and a range change brings it straight back down; not one query fails
// across the resizes, whose events carry their reasons. The cooldown, pgbench throughput, the
// kernel's limits and bad input are in wake-service/tests/autoscale.rs.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import ws from 'ws';
import { Pool } from '@neondatabase/serverless';
import { neon, neonConfig, requireEnv, GATEWAY_HOST, GATEWAY_PORT } from './helpers.js';
import { WakeApi, sleep } from './stack.js';

const api = new WakeApi(requireEnv('WAKE_URL').replace(/\/+$/, ''), requireEnv('WAKE_ADMIN_TOKEN'));

neonConfig.useSecureWebSocket = false;
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const ep = {
  id: `as-${RUN}`,
  role: `sdkt_as_${RUN}`,
  password: randomBytes(12).toString('base64url'),
  database: `sdkt_asdb_${RUN}`,
};
const pools = [];

after(async () => {
  for (const pool of pools) await pool.end().catch(() => {});
  const status = await api.remove(ep.id);
  if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${ep.id} answered ${status}`);
});

const url = `postgres://${ep.role}:${encodeURIComponent(ep.password)}@${ep.id}.localtest.me:${GATEWAY_PORT}/${ep.database}`;
// About 20-30 ms of CPU each on this machine: at 0.25 CU a few clients saturate the quota.
const HEAVY = 'SELECT count(*)::int AS n FROM generate_series(1, 200000)';

const endpoint = () => api.expect(200, 'GET', `/v1/endpoints/${ep.id}`);
const events = () => api.expect(200, 'GET', `/v1/endpoints/${ep.id}/events`);

/** Runs `clients` loops of HEAVY (HTTP and WebSocket) until `stop()` says so. */
function load(stop) {
  const counts = { ok: 0, failed: 0, firstError: null };
  const check = (rows) => {
    if (rows[0]?.n === 200000) counts.ok += 1;
    else throw new Error(`unexpected result ${JSON.stringify(rows)}`);
  };
  const record = (e) => {
    counts.failed += 1;
    counts.firstError ??= `${e.code ?? ''} ${e.message}`;
  };
  const sql = neon(url);
  const http = Array.from({ length: 6 }, async () => {
    while (!stop()) await sql.query(HEAVY).then(check, record);
  });
  const pool = new Pool({ connectionString: url, max: 2 });
  pools.push(pool);
  const sessions = Array.from({ length: 2 }, async () => {
    while (!stop()) await pool.query(HEAVY).then((r) => check(r.rows), record);
  });
  return { counts, done: Promise.all([...http, ...sessions]) };
}

test('load grows the compute within seconds; a range change shrinks it; no query fails', { timeout: 120_000 }, async () => {
  const created = await api.create(ep.id, { min_cu: 0.25, max_cu: 2, suspend_timeout_seconds: -1 });
  assert.equal(created.current_cu, 0.25);
  assert.equal(created.size.pooler_pool_size, 88, JSON.stringify(created.size));
  await api.createRole(ep.id, ep.role, ep.password);
  await api.createDatabase(ep.id, ep.database, ep.role);
  // Quiet first: the autoscaler sees an idle compute at 0.25 CU.
  await sleep(3000);
  assert.equal((await endpoint()).current_cu, 0.25, 'idle stays at min_cu');

  let stopping = false;
  const began = Date.now();
  const running = load(() => stopping);
  let grownAfter = null;
  let grown = null;
  while (Date.now() - began < 30_000) {
    const now = await endpoint();
    if (now.current_cu > 0.25) {
      grownAfter = Date.now() - began;
      grown = now;
      break;
    }
    await sleep(200);
  }
  // A few more seconds at the larger size, then the range pins it back to 0.25 CU under load.
  await sleep(3000);
  const shrunk = await api.expect(200, 'PATCH', `/v1/endpoints/${ep.id}`, { body: { max_cu: 0.25 } });
  await sleep(3000);
  stopping = true;
  await running.done;
  const { counts } = running;
  console.log(`autoscale (driver): grew to ${grown?.current_cu} CU after ${grownAfter} ms; ${counts.ok} queries, ${counts.failed} failed`);

  assert.ok(grown, 'the endpoint grew under load');
  assert.ok(grownAfter < 15_000, `grew within 15 s (${grownAfter} ms)`);
  assert.equal(counts.failed, 0, `no query failed across the resizes: ${counts.firstError}`);
  assert.ok(counts.ok > 20, `the load ran (${counts.ok} queries)`);
  // The grown size: pools follow at once, the restart-only settings wait.
  assert.ok(grown.size.pooler_pool_size > 88, JSON.stringify(grown.size));
  assert.equal(grown.size.gateway_pool_max_conns, grown.size.pooler_pool_size);
  const maxConnections = grown.size.settings.find((s) => s.name === 'max_connections');
  assert.equal(maxConnections.value, '104', 'running with the size it started at');
  assert.ok(Number(maxConnections.pending) > 104, JSON.stringify(maxConnections));
  assert.equal(shrunk.current_cu, 0.25, 'the range change applied at once');
  assert.equal(shrunk.size.pooler_pool_size, 88);

  const resized = (await events()).filter((e) => e.kind === 'resized');
  assert.ok(resized.some((e) => e.detail.startsWith('autoscaler: ') && e.cu > 0.25), JSON.stringify(resized));
  assert.ok(resized.some((e) => e.detail.startsWith('range: ') && e.cu === 0.25), JSON.stringify(resized));
  // Still answering at 0.25 CU.
  assert.deepEqual(await neon(url)`SELECT 1 AS one`, [{ one: 1 }]);
});
