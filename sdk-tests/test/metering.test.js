// Metering end to end, on a private stack (its own wake service, data dir, compute port range,
// gateway, and an HTTP usage sink), with the real driver and node-postgres:
//   - compute time: across several wakes and suspends, an endpoint's active_seconds and
//     compute_unit_seconds equal what its lifecycle events say, and so do its exported
//     active_time_seconds / compute_unit_seconds events (rounded once per endpoint);
//   - traffic: bytes sent and received over HTTP, WebSocket, TCP and -pooler land on that
//     endpoint only (the gateway's counts, carried by its activity reports);
//   - usage reports by hand: a replayed report id counts once, unknown endpoints are listed
//     and not stored, malformed reports are refused whole (not even their activity part), a
//     report at the documented maximum is accepted;
//   - the usage API's input checks;
//   - kill -9 of the wake service with a compute running: adopted, the downtime is metered,
//     nothing twice, and the traffic the gateway counted meanwhile arrives once; kill -9 of
//     the gateway: acknowledged traffic stays, a new one counts on; SIGTERM of the gateway
//     delivers what it counted last;
//   - storage samples, and reading usage never wakes a suspended endpoint;
//   - `wake-service usage report` (the CLI);
//   - the event export (paging by cursor is stable) and the push sink (failing its first
//     attempts) end up with the same events.
//
// Needs WAKE_BIN, GATEWAY_BIN and PG_BIN (see README.md); not the main stack's variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import ws from 'ws';
import { neon, neonConfig, Client } from '@neondatabase/serverless';
import pg from 'pg';
import {
  needEnv,
  poll,
  sleep,
  freePort,
  listeningPorts,
  childEnv,
  Proc,
  WakeApi,
  waitHttpReady,
  postmastersOf,
  pgdataOf,
  promSum,
  reapUnder,
  run,
} from './stack.js';

const WAKE_BIN = needEnv('WAKE_BIN');
const GATEWAY_BIN = needEnv('GATEWAY_BIN');
const PG_BIN = needEnv('PG_BIN');
/** Compute ports of this private stack (as restart.test.js: the files run one at a time). */
const COMPUTE_PORTS = [22000, 22499];
/** --usage-checkpoint-seconds: at most this much compute time is ever unmetered. */
const CHECKPOINT_S = 1;
/** The push sink answers 500 to this many requests before accepting any. */
const SINK_FAILURES = 3;

const TOKEN = randomBytes(24).toString('hex');
const RUN = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const METRICS = new Set(['active_time_seconds', 'compute_unit_seconds', 'public_network_transfer_bytes', 'storage_bytes']);
const USAGE_FIELDS = ['active_seconds', 'compute_unit_seconds', 'ingress_bytes', 'egress_bytes', 'queries', 'sessions', 'connections'];
const TRAFFIC_FIELDS = ['ingress_bytes', 'egress_bytes', 'queries', 'sessions', 'connections'];

/** What a test query sends (a text parameter) and receives (a text column). */
const PARAM_BYTES = 100_000;
const RESULT_BYTES = 200_000;
const PAYLOAD = 'p'.repeat(PARAM_BYTES);
const PAYLOAD_SQL = `SELECT length($1::text) AS n, repeat('x', ${RESULT_BYTES}) AS big`;

let tmp; // everything of this file: data dir and logs; removed in after()
let dataDir;
let wake; // Proc
let gateway; // Proc
let wakePort;
let gwPort;
let gwAdminPort;
let api;
let gatewayArgs;

// The push sink: answers 500 to its first SINK_FAILURES requests, then 200, keeping every
// event of every batch it accepted.
let sink;
const sinkLog = { requests: 0, failed: 0, accepted: [], batches: 0, bad: [] };

/**
 * wake_usage_* counters of wake service processes that were killed (they restart at 0), read
 * just before the kill; `unseen`: events the sink accepted between that read and the kill's
 * end (delivered, but counted by a process whose counters were not read again).
 */
const killedMetrics = { sink_failures: 0, sink_events: 0, unseen: 0 };

/** Endpoints made by `endpoint()`, by short name. */
const eps = {};

function wakeArgs() {
  return [
    'serve',
    '--listen', `127.0.0.1:${wakePort}`,
    '--data-dir', dataDir,
    '--compute-ports', COMPUTE_PORTS.join('-'),
    '--compute-fast',
    '--pg-bin', PG_BIN,
    '--default-endpoint', 'db',
    '--default-suspend-timeout-seconds', '-1',
    '--wake-timeout-seconds', '60',
    '--usage-checkpoint-seconds', String(CHECKPOINT_S),
    '--storage-sample-seconds', '2',
    '--usage-sink-url', `http://127.0.0.1:${sink.address().port}/events`,
  ];
}

async function startWake() {
  wake.start();
  await waitHttpReady(`http://127.0.0.1:${wakePort}/readyz`, wake, 180_000);
}

async function startGateway() {
  gateway.start();
  await waitHttpReady(`http://127.0.0.1:${gwAdminPort}/readyz`, gateway, 60_000);
}

function url(ep, { pooler = false } = {}) {
  return `postgres://${ep.role}:${encodeURIComponent(ep.password)}@${ep.id}${pooler ? '-pooler' : ''}.localtest.me:${gwPort}/${ep.database}`;
}

/** node-postgres settings for plain TCP through the gateway (the endpoint in `options`). */
function tcpConfig(ep, { pooler = false } = {}) {
  return {
    host: '127.0.0.1',
    port: gwPort,
    user: ep.role,
    password: ep.password,
    database: ep.database,
    options: `endpoint=${ep.id}${pooler ? '-pooler' : ''}`,
  };
}

/** The payload query, checked, over one transport. */
function checkPayload(rows, how) {
  assert.equal(rows.length, 1, `${how}: one row`);
  assert.equal(Number(rows[0].n), PARAM_BYTES, `${how}: the parameter arrived whole`);
  assert.equal(rows[0].big.length, RESULT_BYTES, `${how}: the result arrived whole`);
}

async function payloadHttp(ep, opts) {
  checkPayload(await neon(url(ep, opts)).query(PAYLOAD_SQL, [PAYLOAD]), 'HTTP');
}

async function payloadWs(ep, opts) {
  const c = new Client({ connectionString: url(ep, opts) });
  c.on('error', () => {});
  try {
    await c.connect();
    checkPayload((await c.query(PAYLOAD_SQL, [PAYLOAD])).rows, 'WebSocket');
  } finally {
    await c.end().catch(() => {});
  }
}

async function payloadTcp(ep, opts) {
  const c = new pg.Client(tcpConfig(ep, opts));
  c.on('error', () => {});
  try {
    await c.connect();
    checkPayload((await c.query(PAYLOAD_SQL, [PAYLOAD])).rows, 'TCP');
  } finally {
    await c.end().catch(() => {});
  }
}

/**
 * An endpoint with a role and a database it owns, set up with suspend off; then
 * `suspend_timeout_seconds` (when not -1) and a fresh query, so the idle clock starts now.
 */
async function endpoint(name, { suspend = -1 } = {}) {
  const ep = {
    id: `${name}-${RUN}`,
    role: `sdkt_me_${RUN}`,
    password: randomBytes(12).toString('base64url'),
    database: `sdkt_medb_${RUN}`,
  };
  ep.addresses = (await api.create(ep.id, { suspend_timeout_seconds: -1 })).addresses;
  await api.createRole(ep.id, ep.role, ep.password);
  await api.createDatabase(ep.id, ep.database, ep.role);
  if (suspend !== -1) {
    await api.expect(200, 'PATCH', `/v1/endpoints/${ep.id}`, { body: { suspend_timeout_seconds: suspend } });
    await neon(url(ep))`SELECT 1`;
  }
  eps[name] = ep;
  return ep;
}

/** RFC 3339 → seconds since the epoch, keeping the microseconds that Date.parse drops. */
function epoch(s) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(s ?? '');
  assert.ok(m, `an RFC 3339 time: ${s}`);
  return Date.parse(m[1] + m[3]) / 1000 + (m[2] ? Number(m[2]) : 0);
}

const iso = (seconds) => new Date(seconds * 1000).toISOString();
const HOUR = 3600;
const DAY = 86_400;

async function state(id) {
  const r = await api.endpoint(id);
  assert.equal(r.status, 200, `GET ${id}: ${r.text}`);
  return r.json;
}

/** GET an endpoint until no operation is in progress; its body. */
async function settled(id, timeoutMs = 90_000) {
  return poll(
    async () => {
      const e = await state(id);
      return e.operation == null && ['active', 'suspended', 'failed'].includes(e.state) ? e : null;
    },
    `${id} to settle`,
    { timeoutMs, intervalMs: 200 },
  );
}

async function suspended(id, timeoutMs = 30_000) {
  return poll(
    async () => {
      const e = await state(id);
      return e.state === 'suspended' && e.operation == null ? e : null;
    },
    `${id} suspended`,
    { timeoutMs, intervalMs: 100 },
  );
}

const lifecycle = (id) => api.expect(200, 'GET', `/v1/endpoints/${id}/events`);

/**
 * The compute runs the lifecycle events describe: from an event into `active` (when none is
 * open) to the next one into `suspended` or `failed` (or `deleted`); an open run ends at `now`.
 */
function runsOf(events, now) {
  const runs = [];
  let open = null;
  for (const e of events) {
    if (e.to_state === 'active' && open === null) {
      open = { start: epoch(e.at), cu: e.cu ?? 0.25, from: e.kind };
    } else if (open && (e.to_state === 'suspended' || e.to_state === 'failed' || e.kind === 'deleted')) {
      runs.push({ ...open, end: epoch(e.at), to: e.kind });
      open = null;
    }
  }
  if (open) runs.push({ ...open, end: now, open: true });
  return runs;
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const activeOf = (runs) => sum(runs.map((r) => r.end - r.start));
const cuSecondsOf = (runs) => sum(runs.map((r) => (r.end - r.start) * r.cu));

/** GET /v1/endpoints/{id}/usage with `query`; the body. */
async function usage(id, query = '') {
  return api.expect(200, 'GET', `/v1/endpoints/${id}/usage${query ? `?${query}` : ''}`);
}

/** The endpoint's usage totals, polled until `ok(total)`. */
async function usageUntil(id, ok, what, timeoutMs = 20_000) {
  let last;
  try {
    return await poll(
      async () => {
        last = (await usage(id)).total;
        return ok(last) ? last : null;
      },
      `${id}: ${what}`,
      { timeoutMs, intervalMs: 200 },
    );
  } catch (err) {
    try {
      err.message += `\nlast usage of ${id}: ${JSON.stringify(last)}`;
    } catch {
      // read-only message
    }
    throw err;
  }
}

/** Every exported event (pages of `limit`), with the pages' cursors. */
async function exportAll(limit = 1000) {
  const events = [];
  const pages = [];
  let after = '';
  for (let i = 0; i < 10_000; i++) {
    const page = await api.expect(200, 'GET', `/v1/usage/events?limit=${limit}${after === '' ? '' : `&after=${encodeURIComponent(after)}`}`);
    assert.ok(Array.isArray(page.events) && typeof page.next_cursor === 'string', `a page: ${JSON.stringify(page).slice(0, 300)}`);
    assert.ok(page.events.length <= limit, `at most ${limit} events a page, got ${page.events.length}`);
    pages.push({ after, next: page.next_cursor, keys: page.events.map((e) => e.idempotency_key) });
    if (page.events.length === 0) {
      assert.equal(page.next_cursor, after === '' ? page.next_cursor : after, 'an empty page leaves the cursor where it was');
      return { events, pages, cursor: page.next_cursor };
    }
    events.push(...page.events);
    after = page.next_cursor;
  }
  assert.fail('the event export never ended');
}

function checkEventShape(e) {
  const where = JSON.stringify(e);
  assert.ok(METRICS.has(e.metric), `a known metric: ${where}`);
  assert.ok(typeof e.idempotency_key === 'string' && e.idempotency_key.length > 0, `a key: ${where}`);
  assert.ok(Number.isInteger(e.value) && e.value >= 0, `an integer value: ${where}`);
  assert.ok(typeof e.endpoint_id === 'string' && e.endpoint_id.length > 0, `an endpoint: ${where}`);
  if (e.metric === 'storage_bytes') {
    assert.equal(e.type, 'absolute', `storage is absolute: ${where}`);
    epoch(e.time);
  } else {
    assert.equal(e.type, 'incremental', `${e.metric} is incremental: ${where}`);
    assert.ok(epoch(e.start_time) <= epoch(e.stop_time), `start_time <= stop_time: ${where}`);
  }
}

async function wakeMetrics() {
  return api.metrics();
}

/** POST an activity report as a gateway would (admin token); the response. */
function activity(body, opts = {}) {
  return api.call('POST', '/proxy/api/v1/activity', { body, ...opts });
}

function withLogs(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const logs = [wake?.tail(60), gateway?.tail(40)].filter(Boolean).join('\n');
      console.error(logs);
      throw err;
    }
  };
}

before(async () => {
  const busy = [...listeningPorts()].filter((p) => p >= COMPUTE_PORTS[0] && p <= COMPUTE_PORTS[1]);
  assert.deepStrictEqual(busy, [], `ports ${COMPUTE_PORTS.join('-')} must be free for this file's computes`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdkt-metering-'));
  fs.chmodSync(tmp, 0o711); // the computes run as unprivileged users when we are root
  dataDir = path.join(tmp, 'data');

  sink = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      sinkLog.requests += 1;
      if (req.method !== 'POST' || req.url !== '/events') {
        sinkLog.bad.push(`${req.method} ${req.url}`);
        res.writeHead(404).end();
        return;
      }
      if (sinkLog.failed < SINK_FAILURES) {
        sinkLog.failed += 1;
        res.writeHead(500, { 'content-type': 'text/plain' }).end('not yet');
        return;
      }
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        assert.ok(Array.isArray(body.events) && body.events.length > 0 && body.events.length <= 1000);
        sinkLog.batches += 1;
        sinkLog.accepted.push(...body.events);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch (err) {
        sinkLog.bad.push(`unreadable batch: ${err.message}`);
        res.writeHead(400).end();
      }
    });
  });
  await new Promise((resolve) => sink.listen(0, '127.0.0.1', resolve));

  wakePort = await freePort();
  gwPort = await freePort();
  gwAdminPort = await freePort();
  assert.equal(new Set([wakePort, gwPort, gwAdminPort, sink.address().port]).size, 4, 'four distinct ports');
  api = new WakeApi(`http://127.0.0.1:${wakePort}`, TOKEN);

  wake = new Proc('wake-service', WAKE_BIN, wakeArgs(), { env: childEnv({ WAKE_ADMIN_TOKEN: TOKEN }), log: path.join(tmp, 'wake-service.log') });
  await startWake();

  gatewayArgs = [
    '--listen', `127.0.0.1:${gwPort}`,
    '--admin-listen', `127.0.0.1:${gwAdminPort}`,
    '--default-endpoint', 'db',
    '--control-plane-url', `http://127.0.0.1:${wakePort}/proxy/api/v1`,
  ];
  const help = await run(GATEWAY_BIN, ['--help']);
  if (help.stdout.includes('--activity-interval-ms')) gatewayArgs.push('--activity-interval-ms', '200');
  gateway = new Proc('gateway', GATEWAY_BIN, gatewayArgs, {
    env: childEnv({ GATEWAY_CONTROL_PLANE_TOKEN: TOKEN }),
    log: path.join(tmp, 'gateway.log'),
  });
  await startGateway();

  neonConfig.fetchEndpoint = () => `http://127.0.0.1:${gwPort}/sql`;
  neonConfig.webSocketConstructor = ws;
  neonConfig.useSecureWebSocket = false;
  neonConfig.wsProxy = (host, port) => `127.0.0.1:${gwPort}/v2?address=${host}:${port}`;
});

after(async () => {
  const problems = [];
  if (gateway) await gateway.stop('SIGTERM', 15_000);
  if (wake?.running) {
    const exit = await wake.stop('SIGTERM', 90_000);
    if (exit?.signal === 'SIGKILL') problems.push('the wake service ignored SIGTERM');
  }
  if (sink) await new Promise((resolve) => sink.close(resolve));
  if (tmp) {
    const left = await reapUnder(tmp, { pgBin: PG_BIN });
    if (left.length) problems.push(`cleanup had to stop: ${left.join(', ')}`);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (problems.length) console.error(`metering.test.js cleanup: ${problems.join('; ')}`);
});

// ---------------------------------------------------------------------------

test('compute time across three wakes: usage and exported events equal the lifecycle events', { timeout: 120_000 }, withLogs(async () => {
  const ep = await endpoint('mc', { suspend: 1 });
  const sql = neon(url(ep));
  for (let i = 0; i < 3; i++) {
    if (i > 0) assert.deepStrictEqual(await sql`SELECT ${i}::int AS round`, [{ round: i }], `round ${i}: a query wakes it`);
    await suspended(ep.id);
  }
  const events = await lifecycle(ep.id);
  const runs = runsOf(events, Date.now() / 1000);
  assert.equal(runs.length, 3, `three runs: ${JSON.stringify(events.map((e) => [e.kind, e.from_state, e.to_state]))}`);
  assert.ok(runs.every((r) => !r.open), 'every run closed');
  const active = activeOf(runs);
  const cus = cuSecondsOf(runs);
  assert.ok(runs.every((r) => r.cu === 0.25), `cu 0.25 by default: ${JSON.stringify(runs)}`);

  const total = (await usage(ep.id)).total;
  console.log(`# ${ep.id}: runs ${runs.map((r) => (r.end - r.start).toFixed(3)).join(' + ')} = ${active.toFixed(4)} s; usage says ${total.active_seconds} s, ${total.compute_unit_seconds} CU-s`);
  assert.ok(Math.abs(total.active_seconds - active) <= CHECKPOINT_S, `active_seconds ${total.active_seconds} vs the lifecycle's ${active}`);
  // closed runs: the same timestamps on both sides
  assert.ok(Math.abs(total.active_seconds - active) < 0.01, `closed runs match almost exactly: ${total.active_seconds} vs ${active}`);
  assert.ok(Math.abs(total.compute_unit_seconds - cus) < 0.01, `compute_unit_seconds ${total.compute_unit_seconds} vs ${cus} (active × cu)`);
  assert.ok(Math.abs(total.compute_unit_seconds - total.active_seconds * 0.25) < 0.01, 'compute_unit_seconds = active_seconds × 0.25');
  assert.equal(total.ingress_bytes > 0, true, 'its queries went through the gateway');

  // the exported events, once two checkpoints have passed
  await sleep(2 * CHECKPOINT_S * 1000 + 500);
  const mine = (await exportAll()).events.filter((e) => e.endpoint_id === ep.id);
  mine.forEach(checkEventShape);
  const activeEvents = mine.filter((e) => e.metric === 'active_time_seconds');
  const cuEvents = mine.filter((e) => e.metric === 'compute_unit_seconds');
  const exported = sum(activeEvents.map((e) => e.value));
  const exportedCu = sum(cuEvents.map((e) => e.value));
  console.log(`# ${ep.id}: exported ${activeEvents.length} active_time_seconds events = ${exported} s, ${cuEvents.length} compute_unit_seconds events = ${exportedCu}; rounded runs ${sum(runs.map((r) => Math.round(r.end - r.start)))}`);
  // Rounded once over the endpoint's exact total, not once per run: short runs add up.
  assert.ok(Math.abs(exported - active) <= 0.5 + 0.02, `active_time_seconds events ${exported} vs the lifecycle's ${active.toFixed(3)}`);
  assert.ok(Math.abs(exportedCu - cus) <= 0.5 + 0.02, `compute_unit_seconds events ${exportedCu} vs ${cus.toFixed(3)}`);
  // every compute event lies inside a run, and no two overlap
  const spans = [...activeEvents].map((e) => [epoch(e.start_time), epoch(e.stop_time)]).sort((a, b) => a[0] - b[0]);
  let worst = 0;
  for (const [s, t] of spans) {
    const outside = Math.min(...runs.map((r) => Math.max(0, r.start - s, t - r.end)));
    worst = Math.max(worst, outside);
    assert.ok(outside <= 0.001, `event [${iso(s)}, ${iso(t)}] lies in a run (${(outside * 1000).toFixed(3)} ms outside): ${JSON.stringify(runs.map((r) => [iso(r.start), iso(r.end)]))}`);
  }
  console.log(`# ${ep.id}: compute events reach at most ${(worst * 1000).toFixed(3)} ms outside the lifecycle's runs`);
  for (let i = 1; i < spans.length; i++) assert.ok(spans[i][0] >= spans[i - 1][1] - 0.000_001, 'compute events do not overlap');
  assert.equal(new Set(mine.map((e) => e.idempotency_key)).size, mine.length, 'distinct keys');
  const metrics = await wakeMetrics();
  assert.ok(promSum(metrics, 'wake_usage_active_seconds_total') >= exported, 'wake_usage_active_seconds_total counts at least this endpoint\'s');
}));

test('traffic over HTTP, WebSocket, TCP and -pooler lands on its endpoint; an endpoint that saw none has none', { timeout: 120_000 }, withLogs(async () => {
  const [h, w, t, p, q] = await Promise.all(['mh', 'mw', 'mt', 'mp', 'mq'].map((n) => endpoint(n)));
  const before = promSum(await wakeMetrics(), 'wake_usage_egress_bytes_total');
  await payloadHttp(h);
  await payloadWs(w);
  await payloadTcp(t);
  await payloadTcp(p, { pooler: true });
  await payloadWs(p, { pooler: true });

  const cases = [
    { ep: h, how: 'HTTP', times: 1, sessions: false },
    { ep: w, how: 'WebSocket', times: 1, sessions: true },
    { ep: t, how: 'TCP', times: 1, sessions: true },
    { ep: p, how: 'TCP -pooler and WebSocket -pooler', times: 2, sessions: true },
  ];
  let egress = 0;
  for (const c of cases) {
    const got = await usageUntil(
      c.ep.id,
      (u) => u.ingress_bytes >= c.times * PARAM_BYTES && u.egress_bytes >= c.times * RESULT_BYTES && u.queries >= c.times,
      `${c.how}: the gateway's report of ${c.times} × ${PARAM_BYTES} bytes in and ${RESULT_BYTES} out`,
    );
    console.log(`# ${c.how} (${c.ep.id}): ${TRAFFIC_FIELDS.map((f) => `${f} ${got[f]}`).join(', ')}`);
    assert.equal(got.queries, c.times, `${c.how}: one query per payload, counted once`);
    assert.equal(got.sessions, c.sessions ? c.times : 0, `${c.how}: sessions (WebSocket and TCP only)`);
    assert.ok(got.connections >= 1, `${c.how}: the gateway opened a connection: ${got.connections}`);
    // nothing absurd: a few kB of protocol around the payload
    assert.ok(got.ingress_bytes < c.times * PARAM_BYTES * 1.5 + 50_000, `${c.how}: ingress ${got.ingress_bytes} is the payload and some protocol`);
    assert.ok(got.egress_bytes < c.times * RESULT_BYTES * 1.5 + 50_000, `${c.how}: egress ${got.egress_bytes} is the payload and some protocol`);
    egress += got.egress_bytes;
  }
  // a report or two later, the quiet endpoint still has nothing
  await sleep(1000);
  const quiet = (await usage(q.id)).total;
  for (const f of TRAFFIC_FIELDS) assert.equal(quiet[f], 0, `${q.id} saw no traffic: ${f} = ${quiet[f]}`);
  // the summary agrees with the per-endpoint totals
  const summary = await api.expect(200, 'GET', '/v1/usage');
  for (const c of cases) {
    const line = summary.endpoints.find((e) => e.endpoint_id === c.ep.id);
    assert.ok(line, `/v1/usage lists ${c.ep.id}`);
    assert.equal(line.exists, true);
    assert.equal(line.peak_cu, 0.25, `${c.ep.id}: peak_cu`);
    const per = (await usage(c.ep.id)).total;
    for (const f of TRAFFIC_FIELDS) assert.equal(line[f], per[f], `${c.ep.id}: /v1/usage and /v1/endpoints/{id}/usage agree on ${f}`);
  }
  const after = promSum(await wakeMetrics(), 'wake_usage_egress_bytes_total');
  assert.ok(after - before >= egress, `wake_usage_egress_bytes_total moved by ${after - before}, at least the ${egress} stored`);
}));

test('usage reports by hand: a replay counts once, unknown endpoints are listed, malformed reports store nothing', { timeout: 60_000 }, withLogs(async () => {
  const q = eps.mq;
  assert.ok(q, 'the quiet endpoint of the traffic test');
  const m0 = await wakeMetrics();
  const u0 = (await usage(q.id)).total;
  const last0 = (await state(q.id)).last_active;
  const counts = { ingress_bytes: 1000, egress_bytes: 2000, queries: 3, sessions: 4, connections: 5 };
  const touch = [{ endpoint_id: q.id, sessions: 0, in_flight: 0, idle_ms: 0 }];
  const report = (report_id, endpoints) => ({ interval_ms: 1000, endpoints: touch, cached: [], usage: { report_id, endpoints } });

  const id1 = `manual-${RUN}-1`;
  const first = await activity(report(id1, [{ endpoint_id: q.id, ...counts }]));
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.usage_applied, id1, `the reply acknowledges ${id1}: ${first.text}`);
  assert.deepStrictEqual(first.json.usage_unknown ?? [], []);
  const last1 = (await state(q.id)).last_active;
  assert.ok(last1 && (last0 === null || epoch(last1) > epoch(last0)), `the activity part was applied: last_active ${last0} → ${last1}`);
  const again = await activity(report(id1, [{ endpoint_id: q.id, ...counts }]));
  assert.equal(again.status, 200, again.text);
  assert.equal(again.json.usage_applied, id1, 'a replay is acknowledged too');
  const u1 = (await usage(q.id)).total;
  for (const f of TRAFFIC_FIELDS) assert.equal(u1[f], u0[f] + counts[f], `${f} rose once: ${u0[f]} → ${u1[f]}`);

  // ids that name no endpoint (whatever they look like): listed, not stored; the others are
  const ghost = `nosuch-${RUN}`;
  const odd = ['Not An Id', `${q.id}-pooler`];
  const id2 = `manual-${RUN}-2`;
  const mixed = await activity(report(id2, [
    { endpoint_id: q.id, ingress_bytes: 10, egress_bytes: 0, queries: 0, sessions: 0, connections: 0 },
    { endpoint_id: ghost, ...counts },
    ...odd.map((endpoint_id) => ({ endpoint_id, ...counts })),
  ]));
  assert.equal(mixed.status, 200, mixed.text);
  assert.equal(mixed.json.usage_applied, id2);
  assert.deepStrictEqual([...mixed.json.usage_unknown].sort(), [ghost, ...odd].sort());
  const u2 = (await usage(q.id)).total;
  assert.equal(u2.ingress_bytes, u1.ingress_bytes + 10, 'the known endpoint of the report was stored');
  const ghostUsage = await api.call('GET', `/v1/endpoints/${ghost}/usage`);
  assert.equal(ghostUsage.status, 404, ghostUsage.text);
  const summary = await api.expect(200, 'GET', '/v1/usage');
  for (const x of [ghost, ...odd]) assert.equal(summary.endpoints.some((e) => e.endpoint_id === x), false, `/v1/usage has nothing of ${x}`);

  // malformed: 400, and nothing of the report stored (usage nor activity)
  const last2 = (await state(q.id)).last_active;
  const entry = { endpoint_id: q.id, ingress_bytes: 7, egress_bytes: 7, queries: 7, sessions: 7, connections: 7 };
  const many = Array.from({ length: 10_001 }, (_, i) => ({ ...entry, endpoint_id: `e${i}-${RUN}` }));
  const bad = {
    'empty report_id': report('', [entry]),
    'report_id of 129 characters': report('r'.repeat(129), [entry]),
    'a repeated endpoint': report(`bad-${RUN}-1`, [entry, entry]),
    'a repeated unknown endpoint': report(`bad-${RUN}-2`, [entry, { ...entry, endpoint_id: ghost }, { ...entry, endpoint_id: ghost }]),
    'a counter above 2^50': report(`bad-${RUN}-4`, [{ ...entry, egress_bytes: 2 ** 50 + 1 }]),
    '10001 entries': report(`bad-${RUN}-5`, [entry, ...many.slice(1)]),
  };
  const refusedByCheck = Object.keys(bad).length;
  bad['a negative counter'] = report(`bad-${RUN}-6`, [{ ...entry, queries: -1 }]);
  bad['a fractional counter'] = report(`bad-${RUN}-7`, [{ ...entry, queries: 1.5 }]);
  bad['a string counter'] = report(`bad-${RUN}-8`, [{ ...entry, queries: '7' }]);
  bad['no endpoints list'] = { ...report(`bad-${RUN}-9`, []), usage: { report_id: `bad-${RUN}-9` } };
  for (const [what, body] of Object.entries(bad)) {
    const r = await activity(body);
    assert.equal(r.status, 400, `${what}: expected 400, got ${r.status}: ${r.text.slice(0, 300)}`);
  }
  const notJson = await activity(undefined, { raw: '{"interval_ms": 1000, "endpoints": [], "usage": {', contentType: 'application/json' });
  assert.equal(notJson.status, 400, `not JSON: ${notJson.status} ${notJson.text}`);
  const u3 = (await usage(q.id)).total;
  for (const f of TRAFFIC_FIELDS) assert.equal(u3[f], u2[f], `malformed reports stored nothing: ${f} ${u2[f]} → ${u3[f]}`);
  assert.equal((await state(q.id)).last_active, last2, 'malformed reports stored nothing of their activity either (last_active)');
  // the report ids of refused reports were not taken: sent well-formed, they count
  const retry = await activity(report(`bad-${RUN}-1`, [entry]));
  assert.equal(retry.json?.usage_applied, `bad-${RUN}-1`, retry.text);
  assert.equal((await usage(q.id)).total.ingress_bytes, u3.ingress_bytes + 7, 'a refused report id was not remembered');

  const m1 = await wakeMetrics();
  const outcome = (text, o) => promSum(text, 'wake_usage_reports_total', { outcome: o });
  assert.ok(outcome(m1, 'duplicate') - outcome(m0, 'duplicate') >= 1, 'a duplicate was counted');
  assert.ok(outcome(m1, 'applied') - outcome(m0, 'applied') >= 3, 'three applied');
  assert.ok(outcome(m1, 'invalid') - outcome(m0, 'invalid') >= refusedByCheck, `${refusedByCheck} invalid`);
  assert.ok(promSum(m1, 'wake_usage_unknown_endpoints_total') - promSum(m0, 'wake_usage_unknown_endpoints_total') >= 1, 'an unknown endpoint was counted');
}));

test('an activity report at the documented maximum (10000 entries in each list, 63-character ids, counters at 2^50) is accepted', { timeout: 60_000 }, withLogs(async () => {
  // What one gateway may send when it serves that many endpoints: each list is capped at
  // 10000 (MAX_REPORTED_ENDPOINTS), ids at 63 characters, counters at 2^50 (MAX_USAGE_COUNTER).
  const q = eps.mq;
  const u0 = (await usage(q.id)).total;
  const id = (i) => `x${String(i).padStart(5, '0')}-${'a'.repeat(56)}`;
  const max = 2 ** 50;
  const body = {
    interval_ms: 1000,
    endpoints: Array.from({ length: 10_000 }, (_, i) => ({ endpoint_id: id(i), sessions: 100_000, in_flight: 100_000, idle_ms: 86_400_000 })),
    cached: Array.from({ length: 10_000 }, (_, i) => id(i)),
    usage: {
      report_id: `max-${RUN}-${'m'.repeat(100)}`.slice(0, 128),
      endpoints: [
        { endpoint_id: q.id, ingress_bytes: 1, egress_bytes: 1, queries: 1, sessions: 1, connections: 1 },
        ...Array.from({ length: 9_999 }, (_, i) => ({ endpoint_id: id(i), ingress_bytes: max, egress_bytes: max, queries: max, sessions: max, connections: max })),
      ],
    },
  };
  const size = JSON.stringify(body).length;
  const r = await activity(body);
  console.log(`# a maximal report (${(size / 1e6).toFixed(2)} MB): ${r.status} ${r.text.slice(0, 160)}`);
  assert.equal(r.status, 200, `a valid report of ${size} bytes is refused: ${r.text.slice(0, 300)}`);
  assert.equal(r.json.usage_applied, body.usage.report_id);
  assert.equal(r.json.usage_unknown.length, 9_999, 'the unknown endpoints are listed');
  const u1 = (await usage(q.id)).total;
  for (const f of TRAFFIC_FIELDS) assert.equal(u1[f], u0[f] + 1, `${q.id}: ${f} stored`);
}));

test('the usage API checks its input: 404 for an unknown endpoint, 400 for bad ranges, granularities, cursors, limits', { timeout: 60_000 }, withLogs(async () => {
  const id = eps.mq.id;
  const expectError = async (status, p, what) => {
    const r = await api.call('GET', p);
    assert.equal(r.status, status, `${what} (${p}): expected ${status}, got ${r.status}: ${r.text.slice(0, 300)}`);
    assert.equal(typeof r.json?.error?.code, 'string', `${what}: {"error": {"code", ...}}: ${r.text.slice(0, 300)}`);
    assert.equal(typeof r.json?.error?.message, 'string', `${what}: {"error": {"message", ...}}: ${r.text.slice(0, 300)}`);
  };
  const now = Date.now() / 1000;
  const hourUp = Math.ceil(now / HOUR) * HOUR;
  const dayUp = Math.ceil(now / DAY) * DAY;
  const q = (params) => new URLSearchParams(params).toString();

  await expectError(404, `/v1/endpoints/nosuch-${RUN}/usage`, 'unknown endpoint');
  await expectError(400, `/v1/endpoints/${id}/usage?from=yesterday`, 'unparseable from');
  await expectError(400, `/v1/endpoints/${id}/usage?to=2026-13-01T00:00:00Z`, 'unparseable to');
  await expectError(400, `/v1/endpoints/${id}/usage?${q({ from: iso(now), to: iso(now - 60) })}`, 'from after to');
  await expectError(400, `/v1/endpoints/${id}/usage?${q({ from: iso(hourUp), to: iso(hourUp) })}`, 'from = to');
  await expectError(400, `/v1/endpoints/${id}/usage?granularity=week`, 'bad granularity');
  await expectError(400, `/v1/endpoints/${id}/usage?${q({ from: iso(hourUp - 745 * HOUR), to: iso(hourUp) })}`, '745 hours');
  await expectError(400, `/v1/endpoints/${id}/usage?${q({ from: iso(dayUp - 401 * DAY), to: iso(dayUp), granularity: 'day' })}`, '401 days');
  await expectError(400, '/v1/usage?granularity=hour', '/v1/usage with a granularity');
  await expectError(400, `/v1/usage?${q({ from: iso(now), to: iso(now - 3600) })}`, '/v1/usage from after to');
  await expectError(400, '/v1/usage?from=soon', '/v1/usage unparseable from');
  for (const bad of ['after=abc', 'after=-1', 'after=1.5', 'after=999999999', 'limit=0', 'limit=1001', 'limit=x', 'limit=-3']) {
    await expectError(400, `/v1/usage/events?${bad}`, `events ${bad}`);
  }

  // the limits themselves are fine
  const hours = await usage(id, q({ from: iso(hourUp - 744 * HOUR), to: iso(hourUp) }));
  assert.equal(hours.buckets.length, 744, '744 hourly buckets are allowed');
  const days = await usage(id, q({ from: iso(dayUp - 400 * DAY), to: iso(dayUp), granularity: 'day' }));
  assert.equal(days.buckets.length, 400, '400 daily buckets are allowed');
  assert.equal((await api.expect(200, 'GET', '/v1/usage/events?limit=1000')).events.length <= 1000, true);

  // rounding out to whole buckets, contiguous buckets, totals = sum of buckets
  const r = await usage(id, q({ from: iso(hourUp - 3 * HOUR + 1200), to: iso(hourUp - HOUR + 1) }));
  assert.equal(epoch(r.from), hourUp - 3 * HOUR, `from rounded down to the hour: ${r.from}`);
  assert.equal(epoch(r.to), hourUp, `to rounded up to the hour: ${r.to}`);
  assert.equal(r.granularity, 'hour');
  assert.equal(r.endpoint_id, id);
  assert.equal(r.buckets.length, 3);
  r.buckets.forEach((b, i) => {
    assert.equal(epoch(b.start), hourUp - (3 - i) * HOUR, `bucket ${i} start`);
    assert.equal(epoch(b.end), epoch(b.start) + HOUR, `bucket ${i} end`);
  });
  for (const f of USAGE_FIELDS) {
    assert.ok(Math.abs(r.total[f] - sum(r.buckets.map((b) => b[f]))) < 1e-6, `total.${f} is the sum of the buckets`);
  }
  // defaults: the last 24 hours by hour, 30 days by day (rounded out)
  const dh = await usage(id);
  assert.equal(dh.granularity, 'hour');
  assert.ok([24, 25].includes(dh.buckets.length), `default hourly range: ${dh.buckets.length} buckets`);
  assert.ok(epoch(dh.to) >= now && epoch(dh.to) - now <= HOUR, `default to is now, rounded up: ${dh.to}`);
  const dd = await usage(id, 'granularity=day');
  assert.equal(dd.granularity, 'day');
  assert.ok([30, 31].includes(dd.buckets.length), `default daily range: ${dd.buckets.length} buckets`);
  assert.equal(epoch(dd.from) % DAY, 0, 'days start at midnight UTC');
}));

test('kill -9 of the wake service with a busy compute: adopted, the downtime metered, nothing twice', { timeout: 180_000 }, withLogs(async () => {
  const ep = await endpoint('mk');
  const pgdata = pgdataOf(path.join(dataDir, 'computes', ep.id));
  const sql = neon(url(ep));
  await sql`SELECT 1`;
  let running = true;
  const tally = { ok: 0, failed: 0, okWhileDown: 0, errors: new Set() };
  let down = false;
  const loop = (async () => {
    while (running) {
      try {
        await sql`SELECT pg_sleep(0.05)`;
        tally.ok += 1;
        if (down) tally.okWhileDown += 1;
      } catch (err) {
        tally.failed += 1;
        tally.errors.add(err.message);
      }
      await sleep(50);
    }
  })();
  try {
    await sleep(2000);
    const pms = postmastersOf(pgdata);
    assert.equal(pms.length, 1, 'one postmaster');
    const m = await wakeMetrics();
    killedMetrics.sink_failures += promSum(m, 'wake_usage_sink_failures_total');
    killedMetrics.sink_events += promSum(m, 'wake_usage_sink_events_total');
    const acceptedAtRead = sinkLog.accepted.length;
    const killedAt = Date.now() / 1000;
    await wake.kill();
    killedMetrics.unseen += sinkLog.accepted.length - acceptedAtRead;
    down = true;
    await sleep(4000);
    down = false;
    await startWake();
    const e = await settled(ep.id);
    assert.equal(e.state, 'active', `${ep.id} after the restart: ${JSON.stringify(e)}`);
    const after = postmastersOf(pgdata);
    assert.deepStrictEqual(after.map((p) => p.pid), pms.map((p) => p.pid), 'the running compute was adopted, not restarted');
    const events = await lifecycle(ep.id);
    const since = events.filter((x) => epoch(x.at) >= killedAt - 0.001);
    assert.ok(since.some((x) => x.kind === 'adopted'), `an adopted event after the kill: ${JSON.stringify(since)}`);
    assert.equal(since.some((x) => ['stopped', 'failed', 'started'].includes(x.kind)), false, `no stop or start after the kill: ${JSON.stringify(since)}`);
    await sleep(1500); // queries keep it busy across a checkpoint of the new process
  } finally {
    running = false;
    await loop;
  }
  console.log(`# queries during the run: ${tally.ok} ok (${tally.okWhileDown} with the wake service down), ${tally.failed} failed ${[...tally.errors].slice(0, 3).join(' | ')}`);
  assert.ok(tally.okWhileDown > 0, 'the compute kept serving while the wake service was down');
  // what the gateway counted while the wake service was down arrives after the restart, once
  // (the first query, then the loop's)
  const served = 1 + tally.ok;
  await usageUntil(ep.id, (u) => u.queries >= served, `the ${served} queries served, counted`);
  await sleep(1000);
  const counted = (await usage(ep.id)).total.queries;
  if (tally.failed === 0) assert.equal(counted, served, 'every query counted once, across the outage');
  else assert.ok(counted <= served + tally.failed, `no query counted twice: ${counted} <= ${served} + ${tally.failed}`);

  const events = await lifecycle(ep.id);
  const t0 = Date.now() / 1000;
  const total = (await usage(ep.id)).total;
  const t1 = Date.now() / 1000;
  const low = activeOf(runsOf(events, t0));
  const high = activeOf(runsOf(events, t1));
  const runs = runsOf(events, t1);
  assert.equal(runs.length, 1, `one run, from creation on: ${JSON.stringify(runs)}`);
  console.log(`# ${ep.id}: active_seconds ${total.active_seconds.toFixed(3)}, the lifecycle says ${low.toFixed(3)}-${high.toFixed(3)} (wall clock since the run started)`);
  assert.ok(total.active_seconds >= low - CHECKPOINT_S, `at most one checkpoint interval missing: ${total.active_seconds} vs ${low}`);
  assert.ok(total.active_seconds <= high + CHECKPOINT_S, `nothing counted twice: ${total.active_seconds} <= ${high} + ${CHECKPOINT_S}`);

  // the exported events: the same, to the last checkpoint
  await sleep(2 * CHECKPOINT_S * 1000 + 500);
  const t2 = Date.now() / 1000;
  const exported = (await exportAll()).events.filter((x) => x.endpoint_id === ep.id && x.metric === 'active_time_seconds');
  const value = sum(exported.map((x) => x.value));
  const wall = t2 - runs[0].start;
  console.log(`# ${ep.id}: ${exported.length} active_time_seconds events = ${value} s; ${wall.toFixed(3)} s since the run started`);
  assert.ok(value <= wall + 1, `events count nothing twice: ${value} <= ${wall.toFixed(3)} + 1`);
  assert.ok(value >= wall - 2 * CHECKPOINT_S - 1, `events cover the downtime: ${value} >= ${wall.toFixed(3)} - ${2 * CHECKPOINT_S + 1}`);
}));

test('kill -9 of the gateway: acknowledged traffic stays, a new gateway on the same port counts on; SIGTERM delivers the rest', { timeout: 120_000 }, withLogs(async () => {
  const ep = eps.mh;
  const fields = TRAFFIC_FIELDS;
  const noLess = (a, b, what) => {
    for (const f of fields) assert.ok(a[f] >= b[f], `${what}: ${f} never decreases (${b[f]} → ${a[f]})`);
  };
  const u0 = (await usage(ep.id)).total;
  await payloadHttp(ep);
  await payloadTcp(ep);
  const acked = await usageUntil(
    ep.id,
    (u) => u.ingress_bytes >= u0.ingress_bytes + 2 * PARAM_BYTES && u.egress_bytes >= u0.egress_bytes + 2 * RESULT_BYTES && u.sessions >= u0.sessions + 1,
    'the traffic before the kill acknowledged',
  );
  await gateway.kill();
  assert.equal(gateway.exit.signal, 'SIGKILL');
  const readings = [];
  for (let i = 0; i < 3; i++) {
    readings.push((await usage(ep.id)).total);
    await sleep(300);
  }
  readings.forEach((r, i) => noLess(r, acked, `reading ${i} after the kill`));

  await startGateway();
  const base = (await usage(ep.id)).total;
  noLess(base, acked, 'after the new gateway started');
  await payloadHttp(ep);
  await payloadWs(ep);
  await payloadTcp(ep, { pooler: true });
  const later = await usageUntil(
    ep.id,
    (u) => u.ingress_bytes >= base.ingress_bytes + 3 * PARAM_BYTES && u.egress_bytes >= base.egress_bytes + 3 * RESULT_BYTES,
    'the new gateway\'s traffic counted',
  );
  noLess(later, base, 'with the new gateway');
  await sleep(1000);
  const settledNow = (await usage(ep.id)).total;
  assert.equal(settledNow.queries, base.queries + 3, `queries through the new gateway, once each: ${base.queries} → ${settledNow.queries}`);
  assert.equal(settledNow.sessions, base.sessions + 2, `sessions through the new gateway: ${base.sessions} → ${settledNow.sessions}`);

  // SIGTERM right after a query: the gateway delivers what is left before it exits
  await payloadHttp(ep);
  const exit = await gateway.stop('SIGTERM', 15_000);
  assert.deepStrictEqual(exit, { code: 0, signal: null }, 'the gateway exits cleanly on SIGTERM');
  const final = (await usage(ep.id)).total;
  assert.ok(final.ingress_bytes >= settledNow.ingress_bytes + PARAM_BYTES, `the last query's bytes in were delivered on SIGTERM: ${settledNow.ingress_bytes} → ${final.ingress_bytes}`);
  assert.ok(final.egress_bytes >= settledNow.egress_bytes + RESULT_BYTES, `and its bytes out: ${settledNow.egress_bytes} → ${final.egress_bytes}`);
  assert.equal(final.queries, settledNow.queries + 1, 'and the query');
  await startGateway();
}));

test('storage is sampled while active; reading the usage of a suspended endpoint never wakes it', { timeout: 120_000 }, withLogs(async () => {
  // an active endpoint: sampled every 2 s
  const mk = eps.mk;
  const active = await usageUntil(mk.id, (u) => u.storage_bytes_max > 0, 'a storage sample of an active endpoint');
  assert.ok(active.storage_bytes_avg > 0 && active.storage_bytes_avg <= active.storage_bytes_max, `avg ${active.storage_bytes_avg} <= max ${active.storage_bytes_max}`);

  // mc (1 s suspend timeout) grows by ~8 MB: a sample sees it (while active, or before its suspend)
  const mc = eps.mc;
  const before = (await usage(mc.id)).total.storage_bytes_max ?? 0;
  await neon(url(mc)).query(`CREATE TABLE grow_${RUN} AS SELECT g, repeat('y', 1000) AS pad FROM generate_series(1, 8000) g`);
  const grown = await usageUntil(mc.id, (u) => (u.storage_bytes_max ?? 0) >= before + 6_000_000, `storage of ${mc.id} grew past ${before} + 6 MB`);
  console.log(`# ${mc.id}: storage_bytes_max ${before} → ${grown.storage_bytes_max}`);
  await suspended(mc.id);
  const pgdata = pgdataOf(path.join(dataDir, 'computes', mc.id));
  const events0 = await lifecycle(mc.id);
  assert.equal(postmastersOf(pgdata).length, 0, 'no postmaster once suspended');
  const now = Date.now() / 1000;
  const reads = [
    () => usage(mc.id),
    () => usage(mc.id, 'granularity=day'),
    () => usage(mc.id, new URLSearchParams({ from: iso(now - 600), to: iso(now + 600) }).toString()),
    () => api.expect(200, 'GET', '/v1/usage'),
  ];
  for (let i = 0; i < 6; i++) {
    for (const read of reads) await read();
    const e = await state(mc.id);
    assert.equal(e.state, 'suspended', `read ${i}: still suspended`);
    assert.equal(e.operation ?? null, null, `read ${i}: no operation`);
    await sleep(400);
  }
  const kept = (await usage(mc.id)).total;
  assert.ok(kept.storage_bytes_max >= before + 6_000_000, `a suspended endpoint keeps its last storage sample: ${kept.storage_bytes_max}`);
  const events1 = await lifecycle(mc.id);
  assert.deepStrictEqual(events1, events0, 'no lifecycle event while its usage was read');
  assert.equal(postmastersOf(pgdata).length, 0, 'still no postmaster');
}));

test('wake-service usage report: a line per endpoint with its saving, a TOTAL; bad input fails', { timeout: 60_000 }, withLogs(async () => {
  const env = childEnv({ WAKE_ADMIN_TOKEN: TOKEN });
  const base = ['usage', 'report', '--url', `http://127.0.0.1:${wakePort}`];
  const now = Date.now() / 1000;
  const from = iso(Math.floor(now / HOUR) * HOUR - HOUR);
  const to = iso(now);
  const mc = eps.mc;

  const r = await run(WAKE_BIN, [...base, '--from', from, '--to', to], { env });
  assert.equal(r.code, 0, `exit 0: ${r.stderr}`);
  const summary = await api.expect(200, 'GET', `/v1/usage?${new URLSearchParams({ from, to })}`);
  const lines = r.stdout.trimEnd().split('\n');
  console.log(r.stdout.trimEnd().split('\n').map((l) => `# ${l}`).join('\n'));
  assert.match(lines[0], /^usage from \S+ to \S+ \((\d+) h\); prices: /, 'a header line');
  assert.match(lines[1], /^endpoint\s+active_h\s+CU_h\s+GB_out\s+GB_in\s+queries\s+stor_GB\s+cost_\$\s+always_on\s+saving$/, 'a column line');
  assert.match(lines.at(-1), /^TOTAL\s/, 'a TOTAL line last');
  assert.equal(lines.length, summary.endpoints.length + 3, 'a line per endpoint of /v1/usage');
  const hours = (epoch(summary.to) - epoch(summary.from)) / 3600;
  assert.equal(Number(/\((\d+) h\)/.exec(lines[0])[1]), hours, 'the range in hours');

  const line = lines.find((l) => l.startsWith(`${mc.id} `));
  assert.ok(line, `a line for ${mc.id}`);
  const cols = line.trim().split(/\s+/);
  assert.equal(cols.length, 10, `ten columns: ${line}`);
  const [, activeH, cuH, gbOut, , queries, storGb, cost, alwaysOn, saving] = cols;
  const u = summary.endpoints.find((e) => e.endpoint_id === mc.id);
  assert.ok(Math.abs(Number(activeH) - u.active_seconds / 3600) <= 0.006, `active_h ${activeH} vs ${u.active_seconds} s`);
  assert.ok(Math.abs(Number(cuH) - u.compute_unit_seconds / 3600) <= 0.006, `CU_h ${cuH}`);
  assert.ok(Math.abs(Number(gbOut) - u.egress_bytes / 1e9) <= 0.0006, `GB_out ${gbOut}`);
  assert.equal(Number(queries), u.queries, 'queries');
  assert.ok(Math.abs(Number(storGb) - (u.storage_bytes_avg ?? 0) / 1e9) <= 0.0006, `stor_GB ${storGb}`);
  const rest = ((u.storage_bytes_avg ?? 0) / 1e9) * 0.35 * hours / 730 + (u.egress_bytes / 1e9) * 0.1;
  const expCost = (u.compute_unit_seconds / 3600) * 0.106 + rest;
  const expAlways = Math.max(u.peak_cu, 0.25) * hours * 0.106 + rest;
  assert.ok(Math.abs(Number(cost) - expCost) <= 0.00006, `cost_$ ${cost} vs ${expCost}`);
  assert.ok(Math.abs(Number(alwaysOn) - expAlways) <= 0.00006, `always_on ${alwaysOn} vs ${expAlways}`);
  assert.match(saving, /^-?\d+%$/, `a saving column: ${saving}`);
  assert.ok(Math.abs(Number(saving.slice(0, -1)) - (1 - expCost / expAlways) * 100) <= 1, `saving ${saving} vs ${((1 - expCost / expAlways) * 100).toFixed(1)}%`);

  // one endpoint
  const one = await run(WAKE_BIN, [...base, '--endpoint', mc.id, '--price-cu-hour', '1'], { env });
  assert.equal(one.code, 0, one.stderr);
  const oneLines = one.stdout.trimEnd().split('\n');
  assert.equal(oneLines.length, 4, `header, columns, ${mc.id}, TOTAL: ${one.stdout}`);
  assert.ok(oneLines[2].startsWith(`${mc.id} `));
  assert.match(oneLines[0], /\$1\/CU-hour/, 'the price given');

  // bad input: non-zero, with a message
  for (const [what, args, pattern] of [
    ['a bad --from', ['--from', 'yesterday'], /--from|RFC 3339/],
    ['an unknown --endpoint', ['--endpoint', `nosuch-${RUN}`], /nosuch/],
    ['a negative price', ['--price-cu-hour=-1'], /price/i],
  ]) {
    const bad = await run(WAKE_BIN, [...base, ...args], { env });
    assert.notEqual(bad.code, 0, `${what}: a non-zero exit (stdout ${bad.stdout})`);
    assert.match(bad.stderr, pattern, `${what}: a message: ${bad.stderr}`);
  }
  const denied = await run(WAKE_BIN, [...base], { env: childEnv({ WAKE_ADMIN_TOKEN: 'wrong' }) });
  assert.notEqual(denied.code, 0, 'a wrong token fails');
}));

test('the event export pages stably by cursor, and the push sink (failing at first) receives exactly the same events', { timeout: 120_000 }, withLogs(async () => {
  // quiet: no compute runs, so no new events
  for (const e of await api.endpoints()) {
    if (e.state === 'active') await api.expect(200, 'POST', `/v1/endpoints/${e.id}/suspend?force=true`);
  }
  for (const e of await api.endpoints()) await settled(e.id);
  let stable;
  await poll(
    async () => {
      const a = await exportAll();
      await sleep(2 * CHECKPOINT_S * 1000 + 300);
      const b = await exportAll();
      stable = b;
      return a.events.length === b.events.length && a.events.length > 0;
    },
    'the event log to stop growing',
    { timeoutMs: 40_000, intervalMs: 0 },
  );

  const one = await exportAll(7);
  const two = await exportAll(7);
  assert.deepStrictEqual(two.events, one.events, 'paging twice: the same events');
  assert.deepStrictEqual(two.pages, one.pages, 'paging twice: the same cursors and pages');
  assert.deepStrictEqual(one.events, stable.events, 'pages of 7 and of 1000: the same events');
  assert.ok(one.pages.length >= 3, `several pages: ${one.pages.length}`);
  assert.ok(one.pages.slice(0, -2).every((p) => p.keys.length === 7), 'full pages but the last');
  const keys = one.events.map((e) => e.idempotency_key);
  assert.equal(new Set(keys).size, keys.length, 'no duplicate idempotency keys');
  one.events.forEach(checkEventShape);
  // a page from a cursor in the middle: what followed it
  const mid = one.pages[1];
  const page = await api.expect(200, 'GET', `/v1/usage/events?limit=7&after=${encodeURIComponent(mid.after)}`);
  assert.deepStrictEqual(page.events.map((e) => e.idempotency_key), mid.keys, 'a cursor gives the same page again');
  const metricsSeen = new Set(one.events.map((e) => e.metric));
  for (const m of METRICS) assert.ok(metricsSeen.has(m), `events of ${m}: ${[...metricsSeen]}`);

  // the export and the usage API tell the same story, per endpoint
  const summary = await api.expect(200, 'GET', '/v1/usage');
  for (const u of summary.endpoints) {
    const of = (metric) => one.events.filter((e) => e.endpoint_id === u.endpoint_id && e.metric === metric);
    const runs = runsOf(await lifecycle(u.endpoint_id), Date.now() / 1000);
    assert.ok(runs.every((r) => !r.open), `${u.endpoint_id}: every run closed`);
    const active = sum(of('active_time_seconds').map((e) => e.value));
    const cus = sum(of('compute_unit_seconds').map((e) => e.value));
    const egress = sum(of('public_network_transfer_bytes').map((e) => e.value));
    const storage = of('storage_bytes').map((e) => e.value);
    const what = `${u.endpoint_id} (${runs.length} runs; usage ${JSON.stringify(u)})`;
    // Rounded once per endpoint (the events telescope over its exact total), however many runs.
    assert.ok(Math.abs(active - u.active_seconds) <= 0.5 + 0.01, `${what}: active_time_seconds events ${active}`);
    assert.ok(Math.abs(cus - u.compute_unit_seconds) <= 0.5 + 0.01, `${what}: compute_unit_seconds events ${cus}`);
    assert.equal(egress, u.egress_bytes, `${what}: public_network_transfer_bytes events`);
    assert.equal(storage.length > 0 ? Math.max(...storage) : null, u.storage_bytes_max ?? null, `${what}: the largest storage_bytes event`);
  }

  // the push sink: everything, deduplicated by key, and nothing else
  const byKey = new Map(one.events.map((e) => [e.idempotency_key, e]));
  let got;
  await poll(
    () => {
      got = new Map();
      for (const e of sinkLog.accepted) got.set(e.idempotency_key, e);
      return got.size >= byKey.size;
    },
    `the sink to receive ${byKey.size} events`,
    { timeoutMs: 30_000, intervalMs: 200 },
  ).catch((err) => {
    err.message += ` (it has ${got?.size}; ${sinkLog.requests} requests, ${sinkLog.failed} failed)`;
    throw err;
  });
  const missing = keys.filter((k) => !got.has(k));
  const extra = [...got.keys()].filter((k) => !byKey.has(k));
  assert.deepStrictEqual({ missing, extra }, { missing: [], extra: [] }, 'the sink has exactly the exported events');
  for (const e of sinkLog.accepted) assert.deepStrictEqual(e, byKey.get(e.idempotency_key), 'a key always carries the same event');
  const duplicates = sinkLog.accepted.length - got.size;
  console.log(`# sink: ${sinkLog.requests} requests (${sinkLog.failed} answered 500), ${sinkLog.batches} batches, ${sinkLog.accepted.length} events (${duplicates} delivered again), ${byKey.size} exported`);
  assert.deepStrictEqual(sinkLog.bad, [], 'every request was a POST /events with a batch');
  assert.equal(sinkLog.failed, SINK_FAILURES, 'the sink failed its first requests');
  const m = await wakeMetrics();
  const failures = killedMetrics.sink_failures + promSum(m, 'wake_usage_sink_failures_total');
  assert.ok(failures >= SINK_FAILURES, `wake_usage_sink_failures_total (over both processes): ${failures}`);
  const delivered = killedMetrics.sink_events + promSum(m, 'wake_usage_sink_events_total');
  assert.ok(
    delivered + killedMetrics.unseen >= byKey.size,
    `wake_usage_sink_events_total (over both processes): ${delivered}, plus ${killedMetrics.unseen} accepted after the killed one's were read, >= ${byKey.size}`,
  );
}));
