// Cold start: the first query on a suspended endpoint, through the gateway with the real
// driver (HTTP and WebSocket), against the floor measured in the same run on the same data:
// starting a bare Postgres on the endpoint's data directory (`postgres -D`, no wake service,
// no gateway, no PgBouncer) and running one query over TCP with the same role (SCRAM).
// Rounds alternate so that drift hits both sides alike. Bounded: BENCH_COLD_ROUNDS rounds, and
// every network wait has a time limit (STEP_MS).
// With BENCH_COLD_START_JSON set, the figures are also written there as JSON (merged into
// BENCHMARKS.md by `loadgen report`).
//
// Run with: make bench   (scripts/bench.sh starts a wake service and a release gateway)

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { neon, neonConfig, Client } from '@neondatabase/serverless';
import pg from 'pg';
import ws from 'ws';

for (const name of ['GATEWAY_HTTP', 'WAKE_URL', 'WAKE_ADMIN_TOKEN', 'WAKE_DATA', 'PG_BIN']) {
  if (!process.env[name]) throw new Error(`${name} is not set; run this through scripts/bench.sh`);
}
const GATEWAY = new URL(process.env.GATEWAY_HTTP);
const WAKE_URL = process.env.WAKE_URL.replace(/\/+$/, '');
const ROUNDS = Number(process.env.BENCH_COLD_ROUNDS ?? 30);
// Longest wait for one step (an API call, a cold query): a suspend may wait up to 30 s for
// sessions to finish, a resume up to the wake timeout.
const STEP_MS = 90_000;
neonConfig.fetchEndpoint = () => `${process.env.GATEWAY_HTTP}/sql`;
neonConfig.webSocketConstructor = ws;
neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY.hostname}:${GATEWAY.port}/v2?address=${host}:${port}`;

async function call(method, urlPath, body) {
  const res = await fetch(WAKE_URL + urlPath, {
    method,
    signal: AbortSignal.timeout(STEP_MS),
    headers: { authorization: `Bearer ${process.env.WAKE_ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${urlPath}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

async function metricSum(name) {
  const text = await (await fetch(`${WAKE_URL}/metrics`, { signal: AbortSignal.timeout(STEP_MS) })).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.split(/\s+/).pop()), 0);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** `promise`, or an error after STEP_MS (the script then fails instead of hanging). */
function bounded(what, promise) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${STEP_MS} ms`)), STEP_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

// The endpoint under test, with its own role.
const id = `bench-cold-${process.pid.toString(36)}`;
const role = 'bench_cold';
const password = randomBytes(12).toString('base64url');
const ep = await call('POST', '/v1/endpoints', { id, suspend_timeout_seconds: -1 });
await call('POST', `/v1/endpoints/${id}/roles`, { name: role, password });
const url = `postgres://${role}:${password}@${id}.localtest.me:${GATEWAY.port}/postgres`;
const sql = neon(url);
const [directHost, directPort] = ep.addresses.direct.split(':');
const pgdata = path.join(process.env.WAKE_DATA, 'computes', id, 'pgdata');
if (!fs.existsSync(pgdata)) throw new Error(`no data directory at ${pgdata} (WAKE_DATA must be the wake service's --data-dir)`);
// As root, the bare postgres runs as the endpoint's own OS user (the owner of its data).
const asRoot = process.getuid() === 0;
const owner = fs.statSync(pgdata);
const uid = asRoot ? owner.uid : undefined;
const gid = asRoot ? owner.gid : undefined;
const floorLog = path.join(os.tmpdir(), `bench-cold-floor-${process.pid}.log`);

async function suspend() {
  const e = await call('POST', `/v1/endpoints/${id}/suspend?force=true`);
  if (e.state !== 'suspended') throw new Error(`not suspended: ${JSON.stringify(e)}`);
}

/** The floor: bare `postgres -D <the endpoint's data>`, then connect (retrying at once) and one query. */
async function floor() {
  const log = fs.openSync(floorLog, 'a');
  const t0 = performance.now();
  const child = spawn(path.join(process.env.PG_BIN, 'postgres'), ['-D', pgdata], {
    uid,
    gid,
    stdio: ['ignore', log, log],
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  let early;
  child.on('exit', (code) => {
    early = code;
  });
  let client;
  for (;;) {
    if (early !== undefined) throw new Error(`bare postgres exited (${early}); see ${floorLog}`);
    if (performance.now() - t0 > STEP_MS) {
      child.kill('SIGINT');
      throw new Error(`bare postgres did not accept connections within ${STEP_MS} ms; see ${floorLog}`);
    }
    client = new pg.Client({ host: directHost, port: Number(directPort), user: role, password, database: 'postgres' });
    client.on('error', () => {});
    try {
      await client.connect();
      break;
    } catch {
      await client.end().catch(() => {});
      await sleep(1);
    }
  }
  await client.query('SELECT 1');
  const elapsed = performance.now() - t0;
  await client.end();
  child.kill('SIGINT');
  await exited;
  fs.closeSync(log);
  return elapsed;
}

async function viaHttp() {
  const t0 = performance.now();
  const rows = await sql`SELECT 1 AS one`;
  const elapsed = performance.now() - t0;
  if (rows[0]?.one !== 1) throw new Error(`wrong answer: ${JSON.stringify(rows)}`);
  return elapsed;
}

async function viaWebSocket() {
  const t0 = performance.now();
  const c = new Client({ connectionString: url });
  await c.connect();
  const { rows } = await c.query('SELECT 1 AS one');
  const elapsed = performance.now() - t0;
  await c.end();
  if (rows[0]?.one !== 1) throw new Error(`wrong answer: ${JSON.stringify(rows)}`);
  return elapsed;
}

const samples = { floor: [], http: [], ws: [] };
let resumeSeconds = 0;
let resumes = 0;
try {
  await bounded('the first query', viaHttp()); // the gateway learns the endpoint (route and role secret cached)
  for (let round = 0; round < ROUNDS; round++) {
    await suspend();
    samples.floor.push(await bounded('the floor', floor()));
    await suspend();
    const [s0, c0] = [await metricSum('wake_resume_seconds_sum'), await metricSum('wake_resume_seconds_count')];
    samples.http.push(await bounded('an HTTP cold query', viaHttp()));
    resumeSeconds += (await metricSum('wake_resume_seconds_sum')) - s0;
    resumes += (await metricSum('wake_resume_seconds_count')) - c0;
    await suspend();
    samples.ws.push(await bounded('a WebSocket cold query', viaWebSocket()));
  }
} finally {
  await fetch(`${WAKE_URL}/v1/endpoints/${id}`, {
    method: 'DELETE',
    signal: AbortSignal.timeout(STEP_MS),
    headers: { authorization: `Bearer ${process.env.WAKE_ADMIN_TOKEN}` },
  }).catch(() => {});
  fs.rmSync(floorLog, { force: true });
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p99: percentile(s, 99), mean: s.reduce((a, b) => a + b, 0) / s.length };
};
const rows = [
  ['floor: bare postgres -D + connect + SELECT 1', stats(samples.floor)],
  ['driver HTTP, first query on a suspended endpoint', stats(samples.http)],
  ['driver WebSocket, connect + first query (suspended)', stats(samples.ws)],
];
const fmt = (n) => n.toFixed(1).padStart(9);
console.log(`\ncold start, ${ROUNDS} rounds${' '.repeat(25)}${'p50 ms'.padStart(9)}${'p99 ms'.padStart(9)}${'mean ms'.padStart(9)}`);
for (const [name, s] of rows) console.log(`${name.padEnd(52)}${fmt(s.p50)}${fmt(s.p99)}${fmt(s.mean)}`);
const floorStats = rows[0][1];
console.log('\nratios to the floor (p50; the goal is under 1.5x):');
console.log(`  HTTP first query / floor:      ${(rows[1][1].p50 / floorStats.p50).toFixed(2)}x   (p99 ${(rows[1][1].p99 / floorStats.p99).toFixed(2)}x)`);
console.log(`  WebSocket first query / floor: ${(rows[2][1].p50 / floorStats.p50).toFixed(2)}x   (p99 ${(rows[2][1].p99 / floorStats.p99).toFixed(2)}x)`);
if (resumes > 0) {
  console.log(`\nwhere the HTTP time goes: the wake service's resume (start Postgres, RESUME PgBouncer, two state`);
  console.log(`transitions) took ${((resumeSeconds / resumes) * 1000).toFixed(1)} ms on average; the rest is the gateway and the driver.`);
}
const http = rows[1][1];
console.log(`\ntargets: p50 <= 250 ms: ${http.p50 <= 250 ? 'met' : 'MISSED'} (${http.p50.toFixed(1)}); p99 <= 500 ms: ${http.p99 <= 500 ? 'met' : 'MISSED'} (${http.p99.toFixed(1)})`);
if (process.env.BENCH_COLD_START_JSON) {
  // For `loadgen report`, which merges these rows into BENCHMARKS.md.
  const result = {
    rounds: ROUNDS,
    floor: rows[0][1],
    http: rows[1][1],
    ws: rows[2][1],
    resume_ms_mean: resumes > 0 ? (resumeSeconds / resumes) * 1000 : null,
  };
  fs.writeFileSync(process.env.BENCH_COLD_START_JSON, `${JSON.stringify(result, null, 2)}\n`);
}
